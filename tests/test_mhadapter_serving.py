"""Serving: one backbone pass feeds all 8 heads, the feature cache, device decoding, the flow with --heads."""

from __future__ import annotations

import math

import duckdb
import pytest
import torch
from PIL import Image

from classify.checkpoints import serving_heads
from classify.features import FeatureCache
from classify.predict import image_batches, predict_attributes
from tests.conftest import SAMPLE_BBOX
from tests.mhadapter_support import sample_images


@pytest.fixture()
def counted(tiny_backbone, monkeypatch):
    calls = []
    real = tiny_backbone.encode_images
    monkeypatch.setattr(tiny_backbone, "encode_images", lambda px: calls.append(px.shape[0]) or real(px))
    return calls


def test_one_backbone_pass_per_image_serves_all_eight_heads(tiny_backbone, trained_heads, counted):
    images = sample_images()
    heads = serving_heads(tiny_backbone, trained_heads.checkpoint.parent)
    result = predict_attributes(images, tiny_backbone, heads, batch_size=8, progress=False)
    assert counted == [8, 8, 3]  # 19 images, each through the backbone once
    table = result.predictions.to_pandas()
    assert len(table) == 19 * 8 and result.failures.empty
    methods = table.groupby("attribute")["method"].unique().map(list).to_dict()
    assert methods.pop("pano_status") == ["mhadapter"] and all(m == ["zeroshot"] for m in methods.values())
    pano = table[table.attribute == "pano_status"]
    assert pano.model_id.str.endswith(heads["pano_status"].head_id).all()
    assert all(math.isclose(sum(p for _, p in probs), 1.0, rel_tol=1e-5) for probs in pano.probabilities)


def test_feature_cache_reruns_heads_without_the_backbone(tiny_backbone, trained_heads, counted, tmp_path):
    images = sample_images()
    heads = serving_heads(tiny_backbone, trained_heads.checkpoint.parent)
    cache = FeatureCache(tmp_path, tiny_backbone)
    first = predict_attributes(images, tiny_backbone, heads, feature_cache=cache, progress=False)
    assert sum(counted) == 19
    second = predict_attributes(images, tiny_backbone, heads, feature_cache=cache, progress=False)
    assert sum(counted) == 19  # nothing new went through the backbone
    key = ["image_id", "attribute"]
    a = first.predictions.to_pandas().sort_values(key).reset_index(drop=True)
    b = second.predictions.to_pandas().sort_values(key).reset_index(drop=True)
    assert (a.label == b.label).all() and (a.confidence - b.confidence).abs().max() < 1e-6
    assert cache.directory.name.startswith(f"tiny-{tiny_backbone.weights_sha256[:16]}")


def test_device_decode_matches_pil_decoding_and_records_bad_files(tiny_backbone, tmp_path):
    files = sample_images()["file"].tolist()[:2]
    png = tmp_path / "converted.png"
    with Image.open(files[1]) as im:
        im.save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    files += [str(png), str(broken)]
    (idx_pil, pil, bad_pil), = list(image_batches(files, tiny_backbone, progress=False))
    (idx_dev, dev, bad_dev), = list(image_batches(files, tiny_backbone, progress=False, device_decode=True))
    assert idx_pil == idx_dev == [0, 1, 2]  # the PNG falls back to a CPU decode
    assert [i for i, _ in bad_pil] == [i for i, _ in bad_dev] == [3]
    assert dev.shape == pil.shape and (dev - pil).abs().mean() < 0.01  # same transform, other resampler
    assert torch.equal(tiny_backbone.encode_images(dev).pooled.argmax(-1), tiny_backbone.encode_images(pil).pooled.argmax(-1))


@pytest.mark.integration
def test_flow_uses_the_heads_folder_and_records_the_method(prefect_harness, trained_heads, tmp_path):
    from flows.city_audit import audit

    summary = audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=str(tmp_path / "run"), device="cpu",
                         heads=str(trained_heads.checkpoint.parent))
    with duckdb.connect(summary["outputs"]["database"], read_only=True) as db:
        rows = dict(db.sql("select attribute, string_agg(distinct method) from predictions group by 1").fetchall())
        ids = db.sql("select distinct model_id from predictions where attribute = 'pano_status'").fetchall()
    assert rows.pop("pano_status") == "mhadapter" and set(rows.values()) == {"zeroshot"} and len(rows) == 7
    assert len(ids) == 1 and ids[0][0].endswith(trained_heads.head.head_id)
