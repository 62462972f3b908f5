"""Classification in chunks on disk: files per chunk, resume after a crash, the same predictions as one chunk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classify.stage import classify_image_store, plan_chunks
from contracts.tables import PREDICTIONS
from geo.imagery import SAMPLE_AREA

REPO = Path(__file__).resolve().parents[1]
KEYS = ["image_id", "attribute"]


def _images() -> pd.DataFrame:
    return pd.read_parquet(SAMPLE_AREA / "images.parquet")


def _predictions(result) -> pd.DataFrame:
    frame = pa.concat_tables([pq.read_table(p) for p in result.prediction_files]).to_pandas()
    return frame.sort_values(KEYS, ignore_index=True)


@pytest.fixture
def counted(tiny_backbone, monkeypatch):
    """The images that went through the backbone (positions of each batch, by count)."""
    seen: list[int] = []
    original = tiny_backbone.encode_images
    monkeypatch.setattr(tiny_backbone, "encode_images", lambda pixels: seen.append(len(pixels)) or original(pixels))
    return seen


def test_chunk_files_appear_in_image_id_order(tiny_backbone, tmp_path):
    images = _images().sample(frac=1.0, random_state=3)  # shuffled: the chunks are cut by image_id regardless
    result = classify_image_store(images, SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                  progress=False)
    assert [c.images for c in result.chunks] == [5, 5, 5, 4]
    files = sorted((tmp_path / "predictions").glob("*/chunk-*.parquet"))
    assert len(files) == 8  # predictions + failures per chunk
    assert [f.name[:11] for f in result.prediction_files] == [f"chunk-{i:05d}" for i in range(4)]
    ordered = sorted(images["image_id"].astype(str))
    for i, chunk in enumerate(result.chunks):
        table = pq.read_table(chunk.predictions)
        assert table.schema.equals(PREDICTIONS, check_metadata=False)
        assert sorted(set(table.column("image_id").to_pylist())) == ordered[5 * i:5 * i + 5]
        assert table.num_rows == chunk.images * 8
        assert pd.read_parquet(chunk.failures).columns.tolist() == ["item_id", "stage", "reason"]
    assert result.reused_chunks == 0 and not result.reused


def test_a_rerun_reuses_every_chunk_without_the_backbone(tiny_backbone, tmp_path, counted):
    first = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                 progress=False)
    assert sum(counted) == 19
    counted.clear()
    again = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                 progress=False)
    assert counted == [] and again.reused and again.reused_images == 19 and again.reused_chunks == 4
    pd.testing.assert_frame_equal(_predictions(first), _predictions(again))


def test_a_lost_chunk_is_the_only_one_classified_again(tiny_backbone, tmp_path, counted):
    first = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                 progress=False)
    mtimes = {c.index: c.predictions.stat().st_mtime_ns for c in first.chunks}
    first.chunks[2].predictions.unlink()  # as if the run died between the chunk's two files
    counted.clear()
    again = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                 progress=False)
    assert sum(counted) == 5
    assert [c.reused for c in again.chunks] == [True, True, False, True]
    assert {c.index: c.predictions.stat().st_mtime_ns for c in again.chunks if c.index != 2} == \
        {i: t for i, t in mtimes.items() if i != 2}
    pd.testing.assert_frame_equal(_predictions(first), _predictions(again))


def test_a_changed_image_reclassifies_only_its_chunk(tiny_backbone, tmp_path, counted):
    images = _images()
    first = classify_image_store(images, SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                 progress=False)
    changed = images.copy()
    last_id = sorted(changed["image_id"].astype(str))[-1]  # in the last chunk
    changed.loc[changed["image_id"].astype(str) == last_id, "sha256"] = "0" * 64
    counted.clear()
    again = classify_image_store(changed, SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=5,
                                 progress=False)
    assert sum(counted) == 4 and [c.reused for c in again.chunks] == [True, True, True, False]
    # the stale file of the old last chunk is gone; the others are those of the first run
    assert sorted(p.name for p in again.prediction_files[:3]) == sorted(p.name for p in first.prediction_files[:3])
    assert not first.chunks[3].predictions.exists()


def test_chunked_predictions_equal_one_chunk(tiny_backbone, tmp_path):
    chunked = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path / "a",
                                   chunk_images=4, batch_size=4, progress=False)
    whole = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path / "b",
                                 chunk_images=1000, batch_size=4, progress=False)
    assert len(chunked.chunks) == 5 and len(whole.chunks) == 1
    a, b = _predictions(chunked), _predictions(whole)
    pd.testing.assert_frame_equal(a.drop(columns=["confidence", "probabilities"]),
                                  b.drop(columns=["confidence", "probabilities"]))
    assert a.confidence.to_numpy() == pytest.approx(b.confidence.to_numpy(), abs=1e-5)
    # and DuckDB reads the chunk files as one table with the contract's rows
    with duckdb.connect() as con:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT (image_id, attribute)) FROM read_parquet($f)",
                                  {"f": [str(p) for p in chunked.prediction_files]}).fetchone()
    assert n == distinct == 19 * 8


def test_plans_are_deterministic_and_refuse_a_bad_size(tmp_path):
    ids = {"weather": "m+zeroshot:1"}
    one = plan_chunks(_images(), SAMPLE_AREA, ids, tmp_path, 7)
    two = plan_chunks(_images().iloc[::-1], SAMPLE_AREA, ids, tmp_path, 7)
    assert one == two and [len(p.image_ids) for p in one] == [7, 7, 5]
    other_model = plan_chunks(_images(), SAMPLE_AREA, {"weather": "m+zeroshot:2"}, tmp_path, 7)
    assert {p.key for p in one}.isdisjoint(p.key for p in other_model) and one[0].directory != other_model[0].directory
    with pytest.raises(ValueError, match="chunk_images"):
        plan_chunks(_images(), SAMPLE_AREA, ids, tmp_path, 0)


KILLED_RUN = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from classify.backbone import load_backbone
    from classify.stage import classify_image_store
    from geo.imagery import SAMPLE_AREA

    backbone = load_backbone("tiny", device="cpu")
    original = backbone.encode_images
    def slow(pixels):  # room for the parent to kill the run between two chunks
        time.sleep(0.6)
        return original(pixels)
    backbone.encode_images = slow
    classify_image_store(pd.read_parquet(SAMPLE_AREA / "images.parquet"), SAMPLE_AREA, backbone=backbone,
                         cache_dir=__import__("pathlib").Path(sys.argv[1]), chunk_images=4, batch_size=4,
                         progress=False)
""")


@pytest.mark.timeout(240)
def test_kill_9_during_classification_then_only_missing_chunks_run(tiny_backbone, tmp_path, counted):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob("predictions/*/chunk-*[0-9a-f].parquet"))) < 2:
            assert child.poll() is None, "the classification ended before it could be killed"
            assert time.monotonic() < deadline, "no two chunks were written in time"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    done = sorted(tmp_path.glob("predictions/*/chunk-*[0-9a-f].parquet"))
    assert 2 <= len(done) < 5  # killed part-way: 5 chunks of 4 images in all
    again = classify_image_store(_images(), SAMPLE_AREA, backbone=tiny_backbone, cache_dir=tmp_path, chunk_images=4,
                                 batch_size=4, progress=False)
    reused = [c for c in again.chunks if c.reused]
    assert len(reused) == len(done)
    assert sum(counted) == 19 - sum(c.images for c in reused)  # only the images without predictions
    table = _predictions(again)
    assert len(table) == 19 * 8 and not table.duplicated(KEYS).any()
    assert not list(tmp_path.rglob("*.partial*"))  # what the killed writer left half-written is swept up
