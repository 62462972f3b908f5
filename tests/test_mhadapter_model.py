"""The CLIP-MHAdapter module: exact size, faithful forward, token layout, text side computed once."""

from __future__ import annotations

import open_clip
import pytest
import torch

from classify.backbone import ImageFeatures
from classify.mhadapter import (AdapterConfig, AdapterConfigError, MHAdapter, MHAdapterHead, build_mhadapter_head,
                                count_trainable_parameters, expected_parameter_count)
from classify.schema import ATTRIBUTES


@pytest.mark.parametrize("heads", [4, 8, 16])
def test_vit_b16_adapter_has_exactly_1380096_parameters(heads):
    assert count_trainable_parameters(MHAdapter(768, 512, heads)) == 1_380_096


def test_widths_come_from_an_unweighted_vit_b16():
    model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    width, embed_dim = model.visual.transformer.width, model.visual.output_dim
    assert (width, embed_dim) == (768, 512)
    head = MHAdapterHead(ATTRIBUTES["weather"], torch.randn(5, embed_dim), 100.0, width)
    assert count_trainable_parameters(head) == 1_380_096
    assert expected_parameter_count(1024, 768) == 2_823_680  # ViT-L/14, methods §2.2


def test_only_the_adapter_trains_on_the_tiny_backbone(tiny_backbone):
    head = build_mhadapter_head(tiny_backbone, ATTRIBUTES["quality"], AdapterConfig(heads=4))
    assert count_trainable_parameters(head) == expected_parameter_count(tiny_backbone.width, tiny_backbone.embed_dim)
    assert count_trainable_parameters(tiny_backbone.model) == 0
    assert not head.text_embeddings.requires_grad
    assert set(map(id, head.trainable_parameters())) == set(map(id, head.adapter.parameters()))


def test_bad_configs_are_refused():
    with pytest.raises(AdapterConfigError, match="divisible"):
        MHAdapter(768, 512, heads=7)
    for blend in (0.0, 1.0, 1.5):
        with pytest.raises(AdapterConfigError, match="strictly inside"):
            MHAdapterHead(ATTRIBUTES["glare"], torch.randn(2, 64), 10.0, 128, AdapterConfig(blend=blend))
    with pytest.raises(AdapterConfigError, match="text embeddings"):
        MHAdapterHead(ATTRIBUTES["glare"], torch.randn(3, 64), 10.0, 128)


def test_forward_matches_the_written_equations(tiny_backbone):
    torch.manual_seed(0)
    head = build_mhadapter_head(tiny_backbone, ATTRIBUTES["weather"], AdapterConfig(heads=4, blend=0.3)).eval()
    features = tiny_backbone.encode_images(torch.randn(3, 3, 224, 224))
    a = head.adapter
    x = torch.relu(a.mlp[2](torch.relu(a.mlp[0](features.patch_tokens))))
    x = torch.nn.functional.layer_norm(x, (x.shape[-1],), a.norm.weight, a.norm.bias)
    attended, _ = a.attention(x, x, x)
    f = 0.3 * attended.mean(dim=1) + 0.7 * features.pooled  # blend on the raw, unnormalised g
    text = torch.nn.functional.normalize(tiny_backbone.encode_text(ATTRIBUTES["weather"].prompts()), dim=-1)
    expected = tiny_backbone.logit_scale * torch.nn.functional.normalize(f, dim=-1) @ text.T
    with torch.no_grad():
        torch.testing.assert_close(head(features), expected, rtol=1e-4, atol=1e-4)


def test_changing_one_image_changes_only_its_row(tiny_backbone):
    torch.manual_seed(1)
    pixels = torch.randn(4, 3, 224, 224)
    changed = pixels.clone()
    changed[2] = torch.randn(3, 224, 224)
    before, after = tiny_backbone.encode_images(pixels), tiny_backbone.encode_images(changed)
    n_patches = (224 // 16) ** 2
    assert before.patch_tokens.shape == (4, n_patches, tiny_backbone.width)
    assert before.pooled.shape == (4, tiny_backbone.embed_dim)
    head = build_mhadapter_head(tiny_backbone, ATTRIBUTES["view_direction"], AdapterConfig(heads=4)).eval()
    with torch.no_grad():
        logits_before, logits_after = head(before), head(after)
    for tensor_before, tensor_after in ((before.patch_tokens, after.patch_tokens), (before.pooled, after.pooled),
                                        (logits_before, logits_after)):
        assert not torch.allclose(tensor_before[2], tensor_after[2])
        unchanged = [0, 1, 3]
        torch.testing.assert_close(tensor_before[unchanged], tensor_after[unchanged])


def test_text_embeddings_are_computed_once_and_never_in_forward(tiny_backbone, monkeypatch):
    from classify.checkpoints import serving_heads

    calls = []
    real = tiny_backbone.model.encode_text
    monkeypatch.setattr(tiny_backbone.model, "encode_text", lambda tokens, **kw: calls.append(len(tokens)) or real(tokens, **kw))
    heads = serving_heads(tiny_backbone)  # 8 zero-shot heads: all prompts in one text-tower call
    assert calls == [sum(len(a.classes) for a in ATTRIBUTES.values())]
    head = build_mhadapter_head(tiny_backbone, ATTRIBUTES["platform"], AdapterConfig(heads=4))
    assert len(calls) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("the text tower ran during a forward pass")

    monkeypatch.setattr(tiny_backbone.model, "encode_text", refuse)
    features = ImageFeatures(torch.randn(2, tiny_backbone.embed_dim),
                             torch.randn(2, 196, tiny_backbone.width))
    for _ in range(3):
        assert head(features).shape == (2, 6)
        assert all(h(features).shape[0] == 2 for h in heads.values())
