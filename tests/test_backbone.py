"""open_clip backbones: one pass yields pooled embedding + penultimate tokens; clear load errors."""

import os
import subprocess
import sys

import pytest
import torch

from classify.backbone import BACKBONES, BackboneError, load_backbone


def test_one_pass_gives_clip_embedding_and_penultimate_tokens(tiny_backbone):
    pixels = torch.randn(3, 3, 224, 224)
    features = tiny_backbone.encode_images(pixels)
    assert features.pooled.shape == (3, tiny_backbone.embed_dim)
    assert features.patch_tokens.shape == (3, 196, tiny_backbone.width)  # 14x14 patches, CLS dropped
    # the pooled output is exactly open_clip's own encode_image
    torch.testing.assert_close(features.pooled, tiny_backbone.model.encode_image(pixels))


def test_penultimate_tokens_are_the_input_of_the_last_block(tiny_backbone):
    pixels = torch.randn(2, 3, 224, 224)
    visual = tiny_backbone.model.visual
    seen = {}
    hook = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    try:
        features = tiny_backbone.encode_images(pixels)
    finally:
        hook.remove()
    torch.testing.assert_close(features.patch_tokens, seen["x"][:, 1:, :])  # batch-first, CLS removed


def test_changing_one_image_changes_only_its_row(tiny_backbone):
    pixels = torch.randn(4, 3, 224, 224)
    before = tiny_backbone.encode_images(pixels)
    pixels[2] = torch.randn(3, 224, 224)
    after = tiny_backbone.encode_images(pixels)
    for i in range(4):
        same = torch.allclose(before.patch_tokens[i], after.patch_tokens[i])
        assert same == (i != 2)
        assert torch.allclose(before.pooled[i], after.pooled[i]) == (i != 2)


def test_tiny_model_is_deterministic_and_marked_untrained(tiny_backbone):
    again = load_backbone("tiny", device="cpu")
    assert again.model_id == tiny_backbone.model_id
    assert tiny_backbone.model_id.startswith("tiny:")
    assert tiny_backbone.trained is False


def test_local_weights_file_is_loaded_and_changes_the_model_id(tiny_backbone, tmp_path):
    state = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    state["visual.proj"] += 0.5
    path = tmp_path / "tiny-finetuned.pt"
    torch.save(state, path)
    loaded = load_backbone("tiny", weights=path, device="cpu")
    assert loaded.trained is True
    assert loaded.model_id != tiny_backbone.model_id
    torch.testing.assert_close(loaded.model.visual.proj, state["visual.proj"])


def test_weights_from_environment_variable(tiny_backbone, tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    monkeypatch.setenv("CITY_AUDIT_WEIGHTS", str(path))
    assert load_backbone("tiny", device="cpu").weights_source == str(path)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_bad_checkpoint_is_refused_clearly(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(BackboneError, match="could not load weights .*broken.pt.* into city-audit-tiny"):
        load_backbone("tiny", weights=path, device="cpu")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(BackboneError, match="could not load weights"):
        load_backbone("tiny", weights=path, device="cpu")


def test_missing_weights_file_and_unknown_model():
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone("tiny", weights="/nonexistent/weights.pt", device="cpu")
    with pytest.raises(BackboneError, match="choose from vit-b16, tiny"):
        load_backbone("resnet-9000")


def test_default_is_the_papers_vit_b16_openai_backbone():
    spec = BACKBONES["vit-b16"]
    assert (spec.open_clip_name, spec.pretrained) == ("ViT-B-16-quickgelu", "openai")


def test_vit_b16_without_internet_explains_what_to_do():
    """Offline, the real default fails fast with the three ways forward (not a stack trace)."""
    code = "from classify.backbone import load_backbone\nload_backbone('vit-b16', device='cpu')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CITY_AUDIT_WEIGHTS": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "BackboneError" in result.stderr
    assert "--weights PATH" in result.stderr and "--model tiny" in result.stderr
