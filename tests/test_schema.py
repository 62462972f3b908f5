"""The frozen Global StreetScapes schema: classes, reference prompts, label aliases."""

import pytest

from classify.schema import ATTRIBUTES, UnknownLabelError, get_attribute


def test_eight_attributes_with_reference_class_counts():
    counts = {name: len(a.classes) for name, a in ATTRIBUTES.items()}
    assert counts == {"weather": 5, "lighting_condition": 3, "glare": 2, "reflection": 2, "quality": 3,
                      "view_direction": 2, "platform": 6, "pano_status": 2}


def test_reference_prompts_after_class_name_normalisation():
    assert ATTRIBUTES["lighting_condition"].prompts() == [
        "a photo taken during day.", "a photo taken during twilight.", "a photo taken during night."]
    assert ATTRIBUTES["view_direction"].prompts() == ["a photo captured along the road.", "a photo captured across the road."]
    assert ATTRIBUTES["glare"].prompts() == ["a photo with no glare.", "a photo with glare."]
    assert ATTRIBUTES["pano_status"].prompts() == ["a non-panoramic photo.", "a panoramic photo."]
    assert ATTRIBUTES["platform"].prompts()[1] == "a photo taken on driving surface."
    assert ATTRIBUTES["quality"].prompts()[1] == "a photo of slightly poor quality."
    assert ATTRIBUTES["weather"].prompts()[2] == "a photo in foggy weather."


@pytest.mark.parametrize("attribute, raw, expected", [
    ("glare", "yes", "glare"), ("glare", "True", "glare"), ("glare", False, "no_glare"), ("glare", "0", "no_glare"),
    ("reflection", "No", "no_reflection"),
    ("lighting_condition", "Dusk/Dawn", "dusk_dawn"), ("lighting_condition", "dawn/dusk", "dusk_dawn"),
    ("view_direction", "front/back", "front_back"), ("view_direction", "side", "side"),
    ("pano_status", True, "panoramic"), ("pano_status", "false", "non_panoramic"),
    ("platform", "walking surface", "walking_surface"), ("quality", "slightly_poor", "slightly_poor"),
])
def test_raw_labels_map_to_canonical_classes(attribute, raw, expected):
    assert ATTRIBUTES[attribute].canonical_label(raw) == expected


def test_unknown_label_is_refused_with_the_choices():
    with pytest.raises(UnknownLabelError, match=r"unknown weather label 'hail'.*'clear'"):
        ATTRIBUTES["weather"].canonical_label("hail")


def test_unknown_attribute_lists_valid_names():
    with pytest.raises(KeyError, match="choose from weather"):
        get_attribute("colour")
