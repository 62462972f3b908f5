"""FAIR-style crop-scoring prediction path (methods §4.5): K fixed crops + the full view, scored by LAS."""

import pytest
import torch

from classify.adapted_visual import AdaptationError
from classify.backbone import ImageFeatures
from classify.fair import FairConfig, build_fair_head, fixed_crops
from classify.schema import get_attribute


def test_fixed_crops_are_deterministic_squares_resized_back():
    pixels = torch.randn(2, 3, 64, 64)
    crops = fixed_crops(pixels, 5)
    assert crops.shape == (2, 5, 3, 64, 64)
    assert torch.equal(crops, fixed_crops(pixels, 5))  # the same boxes every call: predictions repeat
    assert not torch.allclose(crops[:, 0], crops[:, 1])
    # a constant image stays constant whatever the box
    flat = torch.full((1, 3, 64, 64), 0.25)
    torch.testing.assert_close(fixed_crops(flat, 3), torch.full((1, 3, 3, 64, 64), 0.25))


def test_las_path_scores_the_crops_and_the_cls_path_one_pass(tiny_backbone):
    attribute = get_attribute("weather")
    torch.manual_seed(0)
    las = build_fair_head(tiny_backbone, attribute, FairConfig(predict_with="las", predict_crops=3)).eval()
    cls = build_fair_head(tiny_backbone, attribute, FairConfig()).eval()
    cls.load_state_dict(las.state_dict())
    pixels = torch.randn(2, 3, 224, 224)
    features = ImageFeatures(torch.zeros(2, 64), None, pixels)
    with torch.no_grad():
        got = las(features)
        crops = fixed_crops(pixels, 3)
        full = las.encode_cls(pixels)
        crop_cls = las.encode_cls(crops.flatten(0, 1)).view(2, 3, -1)
        expected = las.logit_scale * las.alignment_score(crop_cls, full)
        cheap = cls(features)
    assert las.prediction_path == "las" and cls.prediction_path == "cls"
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cheap, cls.logits(pixels))
    assert not torch.allclose(got, cheap)
    with pytest.raises(AdaptationError):
        FairConfig(predict_with="everything")


def test_las_path_survives_a_checkpoint(tiny_backbone, tmp_path):
    from classify.checkpoints import load_head, save_head  # what city-audit adapt writes and serving reads

    head = build_fair_head(tiny_backbone, get_attribute("glare"), FairConfig(predict_with="las", predict_crops=2))
    sidecar = save_head(head, tmp_path, tiny_backbone)
    loaded = load_head(sidecar, tiny_backbone)
    assert loaded.prediction_path == "las" and loaded.config.predict_crops == 2
