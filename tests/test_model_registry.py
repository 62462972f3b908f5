"""Any open_clip backbone: the curated registry matches open_clip's modules, pairs resolve, refusals are one line.

Every curated architecture is built with random weights on the meta device (no memory, no
download, well under a second each), so the recorded shapes and parameter counts are checked
against the real open_clip modules without ever running a large model.
"""

import pytest
import torch

from classify.backbone import (BACKBONES, BackboneError, NoPatchTokensError, load_backbone, random_backbone,
                               require_patch_tokens)
from classify.mhadapter import AdapterConfig, MHAdapter, count_trainable_parameters, expected_parameter_count
from classify.registry import ModelNameError, resolve_spec


@pytest.mark.parametrize("name", list(BACKBONES))
def test_curated_backbone_builds_offline_with_the_recorded_shapes(name):
    spec = BACKBONES[name]
    backbone = random_backbone(name, device="meta")
    assert (backbone.width, backbone.embed_dim, backbone.n_blocks, backbone.image_size) == \
        (spec.width, spec.embed_dim, spec.layers, spec.image_size)
    features = backbone.encode_images(torch.empty(2, 3, spec.image_size, spec.image_size, device="meta"))
    assert features.pooled.shape == (2, spec.embed_dim)
    assert features.patch_tokens.shape == (2, spec.tokens, spec.width)  # N patches, CLS dropped
    # the registry's MHAdapter count is the one the real module has (methods §2.2), for any head count
    with torch.device("meta"):
        adapter = MHAdapter(backbone.width, backbone.embed_dim, heads=AdapterConfig().heads)
    assert count_trainable_parameters(adapter) == spec.mhadapter_parameters \
        == expected_parameter_count(spec.width, spec.embed_dim)


def test_registry_numbers_of_the_papers_backbones():
    assert BACKBONES["vit-b16"].mhadapter_parameters == 1_380_096
    assert BACKBONES["vit-l14"].mhadapter_parameters == 2_823_680
    assert BACKBONES["vit-b32"].tokens == 49 and BACKBONES["vit-l14"].tokens == 256
    # expected cost: ViT-B/16 is ~17.5 GMAC (methods §2.5); B/32 about a quarter of it, L/14 ~4.6x
    b16 = BACKBONES["vit-b16"].image_gmacs
    assert 17.0 < b16 < 18.0
    assert 0.2 < BACKBONES["vit-b32"].image_gmacs / b16 < 0.3
    assert 4.0 < BACKBONES["vit-l14"].image_gmacs / b16 < 5.0
    assert 0.18 < BACKBONES["vit-b16"].head_gmacs < 0.20  # fused: ~0.19 of the module's ~0.31 GMAC per head


def test_models_command_reads_the_registry(capsys):
    from flows.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, spec in BACKBONES.items():
        line = next(line for line in lines if line.startswith(name + " "))
        assert f"{spec.mhadapter_parameters:,}" in line and f"W={spec.width}" in line and f"{spec.image_size}px" in line


@pytest.mark.parametrize("model, open_clip_name, tag", [
    ("ViT-B-16/laion2b_s34b_b88k", "ViT-B-16", "laion2b_s34b_b88k"),
    ("ViT-B-32/openai", "ViT-B-32-quickgelu", "openai"),  # OpenAI weights get their QuickGELU variant
    ("ViT-L-14/dfn2b", "ViT-L-14-quickgelu", "dfn2b"),
])
def test_open_clip_pairs_resolve(model, open_clip_name, tag):
    spec = resolve_spec(model)
    assert (spec.name, spec.open_clip_name, spec.pretrained) == (model, open_clip_name, tag)
    assert spec.width in (768, 1024) and spec.mhadapter_parameters in (1_380_096, 2_823_680)


def test_bad_model_names_say_what_is_valid():
    with pytest.raises(ModelNameError, match="no pretrained tag 'nope' for ViT-B-16; known: openai"):
        resolve_spec("ViT-B-16/nope")
    with pytest.raises(ModelNameError, match="without weights; add a pretrained tag"):
        resolve_spec("ViT-B-16")
    assert resolve_spec("ViT-B-16", weights="/some/file.pt").width == 768  # a bare arch with a local file is fine
    with pytest.raises(BackboneError, match="ARCH/PRETRAINED"):
        load_backbone("no-such-net/openai", device="cpu")


def test_tower_without_patch_tokens_is_refused_in_one_line_but_zero_shot_runs():
    backbone = random_backbone("RN50/openai", device="meta")
    assert backbone.has_patch_tokens is False
    features = backbone.encode_images(torch.empty(2, 3, 224, 224, device="meta"))
    assert features.pooled.shape == (2, backbone.embed_dim) and features.patch_tokens is None
    for method in ("mhadapter", "microclip", "fair"):
        with pytest.raises(NoPatchTokensError) as info:
            require_patch_tokens(backbone, method)
        message = str(info.value)
        assert "\n" not in message and "zero-shot heads still work" in message and "ModifiedResNet" in message
    require_patch_tokens(backbone, "zeroshot")  # no error


def test_mhadapter_head_refused_on_a_resnet_tower():
    from classify.mhadapter import build_mhadapter_head
    from classify.schema import ATTRIBUTES

    backbone = random_backbone("RN50/openai", device="meta")
    with pytest.raises(NoPatchTokensError, match="mhadapter heads cannot run"):
        build_mhadapter_head(backbone, ATTRIBUTES["weather"], text_embeddings=torch.zeros(5, backbone.embed_dim))
