"""The flow on a real Dask cluster (distributed.LocalCluster, 2 worker processes) equals the single-process run.

Each run classifies the 19 sample images in chunks of 5 (4 chunk tasks), so both workers get
work; a worker killed with SIGKILL in the middle of a chunk costs a retry, never a prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from conftest import SAMPLE_BBOX
from tests.fake_mapillary.fixtures import city, fake, mly_env  # noqa: F401 - fixtures
from warehouse.db import connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHUNK = 5  # 19 images -> 4 chunks
COUNTS = ["images", "matched_images", "segments", "segments_with_predictions", "predictions", "failures",
          "classification_chunks"]


def _run(out: Path, **options) -> dict:
    from flows.city_audit import audit

    return audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", device="cpu", out=str(out), chunk_images=CHUNK,
                 **options)


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    with connect(out / "audit.duckdb", read_only=True) as con:
        return {
            "predictions": con.execute("SELECT * EXCLUDE (run_id, probabilities) FROM predictions "
                                       "ORDER BY image_id, attribute").df(),
            "matches": con.execute("SELECT * FROM matches ORDER BY image_id").df(),
            "segment_attributes": con.execute("SELECT segment_id, attribute, n_images, label, label_counts "
                                              "FROM segment_attributes ORDER BY segment_id, attribute").df(),
        }


def _chunk_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "work" / "predictions").glob("*/chunk-*.parquet"))}


def _assert_same_run(dask_out: Path, local_out: Path, dask_summary: dict, local_summary: dict) -> None:
    assert {k: dask_summary[k] for k in COUNTS} == {k: local_summary[k] for k in COUNTS}
    ours, theirs = _tables(dask_out), _tables(local_out)
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=False, rtol=1e-5, obj=name)
    a = gpd.read_parquet(dask_out / "images.parquet").drop(columns="geometry")
    b = gpd.read_parquet(local_out / "images.parquet").drop(columns="geometry")
    pd.testing.assert_frame_equal(a.drop(columns=["fetched_at"], errors="ignore"),
                                  b.drop(columns=["fetched_at"], errors="ignore"))
    assert _chunk_digests(dask_out).keys() == _chunk_digests(local_out).keys()  # same chunks, same keys


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, prefect_harness):
    out = tmp_path_factory.mktemp("local")
    return out, _run(out)


def test_a_local_cluster_run_equals_the_single_process_run(local_run, tmp_path):
    local_out, local_summary = local_run
    out = tmp_path / "dask"
    summary = _run(out, task_runner="dask", dask_workers=2)
    assert summary["classification_chunks"] == 4
    _assert_same_run(out, local_out, summary, local_summary)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["parameters"]["execution"]["task_runner"] == "dask"
    assert manifest["counts"]["classification_chunks"] == 4 and manifest["counts"]["predictions_reused"] == 0
    # a rerun on the cluster resumes from the chunk files: nothing is classified again
    again = _run(out, task_runner="dask", dask_workers=2)
    assert again["predictions_reused"] == 19 and again["classification_chunks_reused"] == 4


def _slow_chunks(seconds: float) -> None:
    """On a worker: every chunk takes ``seconds`` longer (room to kill the worker in the middle of one)."""
    import classify.stage as stage

    original = stage.predict_attributes

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    stage.predict_attributes = slow


def test_a_worker_killed_mid_run_costs_a_retry_and_nothing_else(local_run, tmp_path):
    from distributed import Client, LocalCluster

    local_out, local_summary = local_run
    out = tmp_path / "dask-killed"
    killed: list[int] = []

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(_slow_chunks, 3.0)

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not killed:
                busy = [addr for addr, keys in client.processing().items() if keys]
                chunking = list((out / "work" / "predictions").glob("*")) if (out / "work").exists() else []
                if busy and chunking:  # classification has started and a worker holds a task
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        summary = _run(out, task_runner="dask", dask_address=cluster.scheduler_address)
        killer.join(timeout=5)
    assert killed, "no worker was killed: the test proved nothing"
    _assert_same_run(out, local_out, summary, local_summary)
    predictions = _tables(out)["predictions"]
    assert len(predictions) == 19 * 8 and not predictions.duplicated(["image_id", "attribute"]).any()


def test_mapillary_tiles_on_a_local_cluster_equal_the_single_process_run(tmp_path, city, mly_env, prefect_harness):
    """The fake Mapillary server's 4 z14 tiles: discovery and download mapped on the cluster, then 30 images in 3 chunks."""
    from flows.city_audit import audit
    from tests.fake_mapillary.fixtures import FAST, city_bbox

    roads = city.roads_geojson(tmp_path / "roads.geojson")
    options = dict(bbox=str(city_bbox(city)), source="mapillary", roads=str(roads), model="tiny", device="cpu",
                   max_images=30, chunk_images=12, mapillary={**FAST, "min_spacing_m": 0})
    local = audit(out=str(tmp_path / "local"), **options)
    tiles_asked = mly_env.requests["tiles"]
    clustered = audit(out=str(tmp_path / "dask"), task_runner="dask", dask_workers=2, **options)
    assert tiles_asked == 4 and local["classification_chunks"] == 3
    assert {k: clustered[k] for k in COUNTS} == {k: local[k] for k in COUNTS}
    ours, theirs = _tables(tmp_path / "dask"), _tables(tmp_path / "local")
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=False, rtol=1e-5, obj=name)
    assert _chunk_digests(tmp_path / "dask").keys() == _chunk_digests(tmp_path / "local").keys()
    store = {p.name: p.read_bytes() for p in (tmp_path / "dask" / "images").rglob("*.jpg")}
    assert len(store) == 30 and store == {p.name: p.read_bytes() for p in (tmp_path / "local" / "images").rglob("*.jpg")}
def test_classification_chunks_go_to_the_gpu_workers_when_the_cluster_has_them(local_run, tmp_path):
    """A cluster of a CPU worker and a worker that advertises ``--resources GPU=1``: only the latter classifies
    (there is no GPU here: the resource is what routes the chunks); the result still equals the local run."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    local_out, local_summary = local_run
    out = tmp_path / "dask-gpu"
    workers = {"cpu": {"cls": Nanny, "options": {"nthreads": 1}},
               "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        summary = _run(out, task_runner="dask", dask_address=cluster.scheduler_address)

        def chunk_keys(dask_worker) -> list[str]:
            return sorted({str(entry[0]) for entry in dask_worker.state.log if "chunk" in str(entry[0])})

        ran = client.run(chunk_keys)
        by_name = {info["name"]: ran[address] for address, info in client.scheduler_info()["workers"].items()}
    assert len(by_name["gpu"]) == 4 and by_name["cpu"] == [], by_name
    _assert_same_run(out, local_out, summary, local_summary)
