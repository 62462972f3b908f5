"""End to end on real sample images with the tiny backbone: adapt, save, load, predict, evaluate, CLI."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from classify.adapt import AdaptConfig, METHODS, adapt_attribute, cosine_lr, image_files
from classify.adapt_eval import adaptation_table, compare_adapted
from classify.adapted_visual import AdaptationError
from classify.backbone import ImageFeatures
from classify.checkpoints import CheckpointError, load_head, serving_heads
from classify.predict import image_batches, predict_attributes
from classify.schema import get_attribute
from classify.views import SelfTrainingViews, random_square_crops, strong_mode_for
from tests.adapt_support import FAST_ADAPT, SAMPLE, few_files, sample_images
from tests.mhadapter_support import pano_csv  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def adapted(tiny_backbone, tmp_path_factory):
    """Each method adapted on 4 sample images for weather, saved into its own heads folder."""
    return {m: adapt_attribute(m, "weather", few_files(), tiny_backbone, tmp_path_factory.mktemp(m),
                               config=FAST_ADAPT, progress=False) for m in METHODS}


def _pixels(backbone, n=4):
    (_, pixels, _), = list(image_batches(few_files(n), backbone, batch_size=n, progress=False))
    return pixels


@pytest.mark.parametrize("method", list(METHODS))
def test_adaptation_changes_predictions_and_the_checkpoint_loads_back(method, adapted, tiny_backbone):
    result = adapted[method]
    torch.manual_seed(FAST_ADAPT.seed)
    fresh = METHODS[method].build(tiny_backbone, get_attribute("weather"), METHODS[method].config()).eval()
    features = ImageFeatures(torch.zeros(4, 1), torch.zeros(4, 1, 1), _pixels(tiny_backbone))
    with torch.no_grad():
        before, after = fresh(features), result.head(features)
        loaded = load_head(result.checkpoint, tiny_backbone)
        again = loaded(features)
    assert (after - before).abs().max() > 1e-3  # self-training moved the model
    assert torch.allclose(again, after, atol=1e-5) and loaded.head_id == result.head.head_id
    sidecar = json.loads(result.checkpoint.read_text())
    assert sidecar["method"] == method and sidecar["hyperparameters"]["unsupervised"] is True
    assert sidecar["hyperparameters"]["method_name"] == METHODS[method].display_name
    assert sidecar["hyperparameters"]["strong_resolved"] == "geometric"  # weather is photometric (MC-P20)
    assert result.history[0]["steps"] == 1 and sum(result.history[0]["pseudo_label_counts"].values()) == 4
    assert METHODS["fair"].display_name == "FAIR-style (reconstructed)"


@pytest.mark.parametrize("method", list(METHODS))
def test_same_seed_same_adapted_weights(method, adapted, tiny_backbone, tmp_path):
    again = adapt_attribute(method, "weather", few_files(), tiny_backbone, tmp_path, config=FAST_ADAPT, progress=False)
    first, second = load_file(str(adapted[method].checkpoint.with_suffix(".safetensors"))), \
        load_file(str(again.checkpoint.with_suffix(".safetensors")))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = adapt_attribute(method, "weather", few_files(), tiny_backbone, tmp_path / "other",
                            config=replace(FAST_ADAPT, seed=1), progress=False)
    other_tensors = load_file(str(other.checkpoint.with_suffix(".safetensors")))
    assert any(not torch.equal(first[k], other_tensors[k]) for k in first)


def test_serving_adapted_heads_is_deterministic_and_records_the_method(adapted, tiny_backbone):
    heads = serving_heads(tiny_backbone, adapted["microclip"].checkpoint.parent)
    images = sample_images().head(5)
    first = predict_attributes(images, tiny_backbone, heads, progress=False).predictions.to_pandas()
    second = predict_attributes(images, tiny_backbone, heads, progress=False).predictions.to_pandas()
    assert first.equals(second)  # CenterCrop test transform: no randomness at prediction time (MC-P9)
    methods = first.groupby("attribute")["method"].first().to_dict()
    assert methods.pop("weather") == "microclip" and set(methods.values()) == {"zeroshot"}


def test_checkpoint_with_an_unknown_method_is_refused(adapted, tiny_backbone, tmp_path):
    source = adapted["fair"].checkpoint
    sidecar = json.loads(source.read_text())
    sidecar["method"] = "lafter"
    (tmp_path / "weather.json").write_text(json.dumps(sidecar))
    (tmp_path / "weather.safetensors").write_bytes(source.with_suffix(".safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="unknown head method 'lafter'"):
        load_head(tmp_path / "weather.json", tiny_backbone)


def test_views_crops_and_schedule(tiny_backbone):
    weak, strong, crops = SelfTrainingViews(few_files(1), tiny_backbone, n_crops=3)[0]
    assert weak.shape == strong.shape == (3, 224, 224) and crops.shape == (3, 3, 224, 224)
    image = Image.new("RGB", (400, 200))
    for crop in random_square_crops(image, 20, (0.5, 0.9), random.Random(0)):
        assert crop.size[0] == crop.size[1] and 100 <= crop.size[0] <= 180
    assert strong_mode_for("weather") == "geometric" and strong_mode_for("platform") == "randaugment"
    assert strong_mode_for("weather", "randaugment") == "randaugment"
    config = AdaptConfig(lr=1e-4, min_lr=2e-6)
    assert cosine_lr(0, 10, config) == pytest.approx(1e-4) and cosine_lr(10, 10, config) == pytest.approx(2e-6)
    assert cosine_lr(5, 10, config) == pytest.approx((1e-4 + 2e-6) / 2)
    with pytest.raises(AdaptationError, match="strong"):
        AdaptConfig(strong="heavy")


def test_image_files_from_a_run_folder_or_a_plain_folder(tmp_path):
    assert len(image_files(SAMPLE)) == len(sample_images())  # images.parquet + images/
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "sub" / "a.jpg")
    assert image_files(tmp_path) == [str(tmp_path / "sub" / "a.jpg")]
    with pytest.raises(AdaptationError, match="no images"):
        image_files(_empty(tmp_path))
    with pytest.raises(AdaptationError, match="not a folder"):
        image_files(tmp_path / "nope")


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_zero_shot_vs_adapted_table_and_cli(tiny_backbone, tmp_path, pano_csv, capsys):
    from flows.cli import main

    code = main(["adapt", "--method", "fair", "--images", str(SAMPLE), "--attribute", "pano_status", "--out",
                 str(tmp_path), "--model", "tiny", "--device", "cpu", "--max-steps", "1", "--adapt-batch-size", "4",
                 "--crops", "2", "--num-workers", "0", "--eval-data", str(pano_csv), "--set", "weighting=margin"])
    out = capsys.readouterr().out
    assert code == 0 and "FAIR-style (reconstructed)" in out and "| pano_status | gain |" in out
    report = json.loads((tmp_path / "pano_status-adaptation.json").read_text())
    assert json.loads((tmp_path / "pano_status.json").read_text())["adapter"]["weighting"] == "margin"
    assert set(report["methods"]) == {"zeroshot", "fair"} and report["n"] == 19
    spherical = int((pd.read_csv(pano_csv)["label"] == "spherical").sum())
    assert report["class_counts"] == {"non_panoramic": 19 - spherical, "panoramic": spherical}
    assert sum(map(sum, report["methods"]["fair"]["confusion_matrix"])) == 19
    zs = compare_adapted("pano_status", pano_csv, tiny_backbone, tmp_path, tmp_path / "again", progress=False)
    assert zs["methods"]["fair"]["accuracy"] == report["methods"]["fair"]["accuracy"]
    assert adaptation_table([report]).count("| pano_status |") == 4  # ZeroR (oracle), zero-shot, adapted, gain
    assert main(["evaluate", "--attribute", "pano_status", "--data", str(pano_csv), "--adapted", str(tmp_path),
                 "--out", str(tmp_path / "evaluation"), "--model", "tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot vs FAIR-style (reconstructed)" in out and "| pano_status | fair |" in out
    assert main(["adapt", "--method", "fair", "--images", str(tmp_path / "none"), "--attribute", "glare",
                 "--model", "tiny", "--device", "cpu"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_method_options_are_typed_and_checked():
    from classify.adapt import method_config
    from classify.fair import FairConfig
    from classify.microclip import MicroCLIPConfig

    assert method_config("microclip", ["gamma=0.25", "fairness=prior"]) == MicroCLIPConfig(gamma=0.25, fairness="prior")
    assert method_config("fair", {"top_k": 2, "weighting": "margin"}) == FairConfig(top_k=2, weighting="margin")
    assert method_config("fair", ["top_k=3"]).top_k == 3
    with pytest.raises(AdaptationError, match="unknown microclip option 'temperature'"):
        method_config("microclip", ["temperature=2"])
    with pytest.raises(AdaptationError, match="not a valid float"):
        method_config("microclip", ["gamma=high"])
    with pytest.raises(AdaptationError, match="unknown adaptation method"):
        method_config("lafter")


def test_an_identical_earlier_adaptation_is_reused_and_any_change_retrains(adapted, tiny_backbone, tmp_path):
    import shutil

    source = adapted["fair"].checkpoint
    for suffix in (".json", ".safetensors"):
        shutil.copy2(source.with_suffix(suffix), tmp_path / f"weather{suffix}")
    again = adapt_attribute("fair", "weather", few_files(), tiny_backbone, tmp_path, config=FAST_ADAPT, progress=False)
    assert again.reused and again.head.head_id == adapted["fair"].head.head_id and again.history
    other_images = adapt_attribute("fair", "weather", few_files(3), tiny_backbone, tmp_path, config=FAST_ADAPT,
                                   progress=False)
    assert not other_images.reused and other_images.n_images == 3
    forced = adapt_attribute("fair", "weather", few_files(3), tiny_backbone, tmp_path, config=FAST_ADAPT,
                             reuse=False, progress=False)
    assert not forced.reused and forced.head.head_id == other_images.head.head_id  # same seed, same result


def test_parameter_groups_decay_everything_by_default_or_only_the_soap_maps(tiny_backbone):
    from classify.adapt import parameter_groups

    head = METHODS["microclip"].build(tiny_backbone, get_attribute("glare"), METHODS["microclip"].config())
    n = len(head.trainable_parameters())
    (everything,) = parameter_groups(head, AdaptConfig())
    assert len(everything["params"]) == n and everything["weight_decay"] == 0.1
    decayed, exempt = parameter_groups(head, AdaptConfig(decay_norms=False))
    assert [p.shape for p in decayed["params"]] == [(tiny_backbone.width, tiny_backbone.width)] * 3
    assert exempt["weight_decay"] == 0.0 and len(exempt["params"]) == n - 3
    fair = METHODS["fair"].build(tiny_backbone, get_attribute("glare"), METHODS["fair"].config())
    (only,) = parameter_groups(fair, AdaptConfig(decay_norms=False))
    assert only["weight_decay"] == 0.0 and len(only["params"]) == len(fair.trainable_parameters())


def test_an_adapted_head_refuses_features_without_pixels(adapted):
    features = ImageFeatures(torch.zeros(2, 64), torch.zeros(2, 196, 128))
    for result in adapted.values():
        with pytest.raises(AdaptationError, match="--adapted DIR"):
            result.head(features)
