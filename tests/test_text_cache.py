"""Text-embedding disk cache (methods §1.4): equal to a fresh encode, no text tower on a hit, keyed by weights and strings."""

import pytest
import torch

from classify.backbone import load_backbone


@pytest.fixture()
def text_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CITY_AUDIT_TEXT_CACHE", str(tmp_path / "text"))
    return tmp_path / "text"


def test_cached_embeddings_equal_a_fresh_encode_and_skip_the_text_tower(tiny_backbone, text_cache, monkeypatch):
    prompts = ["a photo in foggy weather.", "a photo in clear weather."]
    first = tiny_backbone.encode_text(prompts)
    assert len(list(text_cache.glob("*.safetensors"))) == 1
    torch.testing.assert_close(first, tiny_backbone._encode_text(prompts), rtol=0, atol=0)

    def no_text_tower(*args, **kwargs):
        raise AssertionError("the text tower ran on a cache hit")

    monkeypatch.setattr(tiny_backbone.model, "encode_text", no_text_tower)
    torch.testing.assert_close(tiny_backbone.encode_text(prompts), first, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="text tower ran"):
        tiny_backbone.encode_text(prompts[::-1])  # other strings (or order): another key, a real encode


def test_other_weights_get_other_entries(tiny_backbone, text_cache, tmp_path):
    state = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    state["text_projection"] = torch.randn(state["text_projection"].shape, generator=torch.Generator().manual_seed(3))
    torch.save(state, tmp_path / "w.pt")
    other = load_backbone("tiny", weights=tmp_path / "w.pt", device="cpu")
    prompts = ["a photo taken during twilight."]
    a, b = tiny_backbone.encode_text(prompts), other.encode_text(prompts)
    assert not torch.allclose(a, b) and len(list(text_cache.glob("*.safetensors"))) == 2


def test_description_methods_share_the_cache(tiny_backbone, text_cache, monkeypatch):
    from classify.descriptions import class_text
    from classify.schema import get_attribute

    first = class_text(tiny_backbone, get_attribute("weather"))
    monkeypatch.setattr(tiny_backbone.model, "encode_text", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    again = class_text(tiny_backbone, get_attribute("weather"))  # templates + descriptions from disk
    torch.testing.assert_close(again.descriptions, first.descriptions, rtol=0, atol=0)
    torch.testing.assert_close(again.handcrafted, first.handcrafted, rtol=0, atol=0)


def test_cache_can_be_switched_off(tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("CITY_AUDIT_TEXT_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tiny_backbone.encode_text(["a photo with glare."])
    assert not any(tmp_path.rglob("*.safetensors"))
