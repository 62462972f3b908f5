"""Honest comparisons: a converged seeded probe, no scoring on training images, deduplicated labels,
content-keyed feature cache, per-image predictions, unverified weight files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from classify.backbone import ImageFeatures, load_backbone
from classify.baselines import fit_linear_probe
from classify.evaluate import EvaluationError, evaluate_attribute
from classify.features import FeatureCache, encode_files
from classify.labels import LabelFileError, deduplicate, read_labels
from classify.schema import get_attribute


def _blobs(n_per_class: int, seed: int, shift: float = 1.5) -> tuple[ImageFeatures, list[int]]:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, 32, generator=generator) * shift
    labels = [c for c in range(5) for _ in range(n_per_class)]
    pooled = centers[labels] + torch.randn(len(labels), 32, generator=generator)
    return ImageFeatures(pooled, None), labels


def test_linear_probe_is_reproducible_and_converges():
    weather = get_attribute("weather")
    train, y = _blobs(40, seed=0)
    val, yv = _blobs(10, seed=1)
    val = ImageFeatures(val.pooled, None)
    first, info = fit_linear_probe(weather, train, y, val, yv)
    second, again = fit_linear_probe(weather, train, y, val, yv)
    assert torch.equal(first.linear.weight, second.linear.weight) and info["chosen_C"] == again["chosen_C"]
    assert info["converged"] and all(f["loss"] < f["initial_loss"] for f in info["fits"])
    with torch.no_grad():
        accuracy = (first(train).argmax(-1) == torch.tensor(y)).float().mean().item()
    assert accuracy > 0.9  # a fitted logistic regression separates well-separated blobs


def _pano_csv_with(tmp_path, rows) -> str:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return str(path)


def _image(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), color).save(path)
    return str(path)


def test_duplicate_rows_are_dropped_with_a_count_and_conflicts_refused(tmp_path):
    a, b = _image(tmp_path / "a.jpg", (200, 10, 10)), _image(tmp_path / "b.jpg", (10, 200, 10))
    copy = tmp_path / "copy-of-a.jpg"
    copy.write_bytes((tmp_path / "a.jpg").read_bytes())
    pano = get_attribute("pano_status")
    labeled = read_labels(_pano_csv_with(tmp_path, [(a, "panoramic"), (b, "perspective"), (a, "panoramic"),
                                                    (str(copy), "panoramic")]), pano)
    unique, dropped = deduplicate(labeled)
    assert (len(unique), dropped) == (2, 2) and unique.files == (a, b)
    conflicting = read_labels(_pano_csv_with(tmp_path, [(a, "panoramic"), (str(copy), "perspective")]), pano)
    with pytest.raises(LabelFileError, match="same image as .* with another label"):
        deduplicate(conflicting)


def test_cache_keys_are_content_hashes_not_file_names(tiny_backbone, tmp_path):
    one = _image(tmp_path / "city-a" / "0001.jpg", (250, 250, 250))
    two = _image(tmp_path / "city-b" / "0001.jpg", (5, 5, 5))
    cache = FeatureCache(tmp_path / "cache", tiny_backbone)
    first = encode_files([one], ["0001"], tiny_backbone, cache=cache, progress=False)
    second = encode_files([two], ["0001"], tiny_backbone, cache=cache, progress=False)  # same name, other image
    assert not torch.allclose(first.pooled, second.pooled)
    fresh = tiny_backbone.encode_images(torch.stack([tiny_backbone.preprocess(Image.open(two).convert("RGB"))]))
    torch.testing.assert_close(second.pooled, fresh.pooled)
    assert len(list(cache.directory.glob("*.safetensors"))) == 2
    assert cache.key(one) != cache.key(two)


def test_evaluating_on_the_heads_training_images_is_refused(tiny_backbone, trained_heads, pano_csv, tmp_path):
    heads = trained_heads.checkpoint.parent
    with pytest.raises(EvaluationError, match="15 of the 19 test images were trained on"):
        evaluate_attribute("pano_status", pano_csv, tiny_backbone, tmp_path, heads_dir=heads, split="test",
                           progress=False)
    report = evaluate_attribute("pano_status", pano_csv, tiny_backbone, tmp_path, heads_dir=heads, split="test",
                                progress=False, drop_train_overlap=True)
    assert report["n"] == 4 and "15 images the heads trained on were dropped" in report["notes"]["train_overlap"]
    with open(report["predictions_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and set(rows[0]) == {"image_id", "file", "label", "zero_r", "zeroshot", "mhadapter"}
    assert "checkpoint" in report["notes"]["zero_r"]  # ZeroR from the training counts the head recorded
    assert all(row["mhadapter"] in get_attribute("pano_status").classes for row in rows)


def test_a_weights_file_is_hashed_and_unverified_unless_vouched_for(tiny_backbone, tmp_path, monkeypatch):
    import hashlib

    from classify.checkpoints import backbone_identity

    path = tmp_path / "w.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_backbone("tiny", weights=path, device="cpu")
    identity = backbone_identity(loaded)
    assert identity["weights_file_sha256"] == digest and identity["weights_verified"] is False
    monkeypatch.setenv("CITY_AUDIT_WEIGHTS_VERIFIED", digest)
    assert load_backbone("tiny", weights=path, device="cpu").weights_verified is True
    assert json.dumps(identity)  # recorded as-is in checkpoints and evaluation reports
