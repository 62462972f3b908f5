"""Class descriptions and the text side of the adapters (methods §3.3)."""

from __future__ import annotations

import json

import pytest
import torch

from classify.descriptions import (CONTEXT_LENGTH, DescriptionError, class_text, cupl_classifier,
                                   description_weights, handcrafted_prompts, load_descriptions, prior_classifier,
                                   token_count, validate_descriptions)
from classify.schema import ATTRIBUTES, get_attribute


@pytest.mark.parametrize("name", list(ATTRIBUTES))
def test_every_attribute_has_valid_descriptions_that_fit_clip(name):
    attribute = ATTRIBUTES[name]
    sentences = load_descriptions(attribute)
    assert list(sentences) == list(attribute.classes)
    for cls, items in sentences.items():
        assert len(items) >= 8 and len(set(items)) == len(items), cls
        assert all(token_count(s) <= CONTEXT_LENGTH for s in items)


def test_token_count_rejects_overlong_text_as_too_long():
    assert token_count("a photo.") == 5  # start + "a", "photo", "." + end
    assert token_count("road " * 80) > CONTEXT_LENGTH


def test_validation_names_missing_unknown_and_empty_classes():
    weather = get_attribute("weather")
    good = {c: ["a street."] for c in weather.classes}
    with pytest.raises(DescriptionError, match="missing \\['snowy'\\]"):
        validate_descriptions(weather, {k: v for k, v in good.items() if k != "snowy"})
    with pytest.raises(DescriptionError, match="unknown \\['sunny'\\]"):
        validate_descriptions(weather, {**good, "sunny": ["x"]})
    with pytest.raises(DescriptionError, match="no description"):
        validate_descriptions(weather, {**good, "foggy": ["  "]})
    with pytest.raises(DescriptionError, match="JSON object"):
        validate_descriptions(weather, ["a street."])


def test_missing_file_falls_back_to_handcrafted_templates(tmp_path):
    glare = get_attribute("glare")
    with pytest.warns(UserWarning, match="handcrafted"):
        sentences = load_descriptions(glare, tmp_path)
    assert sentences == handcrafted_prompts(glare)
    assert sentences["glare"][0] == "a photo with glare."
    (tmp_path / "glare.json").write_text("{not json")
    with pytest.raises(DescriptionError, match="not valid JSON"):
        load_descriptions(glare, tmp_path)


def test_prior_and_cupl_on_hand_made_embeddings():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]],
                      [[0.6, 0.8], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    h = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    omega = description_weights(e, mask, h)
    assert torch.allclose(omega, torch.tensor([[0.8, 0.6, 0.0], [0.6, 0.0, 0.0]]))
    prior = prior_classifier(e, mask, h)  # linear weights: (0.8, 0.6)/1.4 -> normalised (0.8, 0.6)
    assert torch.allclose(prior, torch.tensor([[0.8, 0.6], [0.6, 0.8]]), atol=1e-6)
    cupl = cupl_classifier(e, mask)  # mean of real rows only: (0.5, 0.5) -> (0.7071, 0.7071)
    assert torch.allclose(cupl[0], torch.tensor([0.5, 0.5]) / 0.5 ** 0.5) and torch.allclose(cupl[1], e[1, 0])


def test_class_text_shapes_and_reference_template_ensemble(tiny_backbone):
    weather = get_attribute("weather")
    text = class_text(tiny_backbone, weather)
    m = max(len(v) for v in load_descriptions(weather).values())
    assert text.descriptions.shape == (5, m, tiny_backbone.embed_dim) and text.mask.shape == (5, m)
    assert torch.allclose(text.descriptions.norm(dim=-1)[text.mask], torch.ones(int(text.mask.sum())), atol=1e-5)
    raw = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(handcrafted_prompts(weather)["foggy"])).detach()
    assert torch.allclose(text.handcrafted[2], torch.nn.functional.normalize(raw.mean(0), dim=-1), atol=1e-5)  # MC-P15
    assert torch.allclose(text.prior, prior_classifier(text.descriptions, text.mask, text.handcrafted))


def test_description_files_are_plain_json_objects():
    from classify.descriptions import DESCRIPTION_DIR

    names = sorted(p.stem for p in DESCRIPTION_DIR.glob("*.json"))
    assert names == sorted(ATTRIBUTES)
    assert all(isinstance(json.loads((DESCRIPTION_DIR / f"{n}.json").read_text()), dict) for n in names)
