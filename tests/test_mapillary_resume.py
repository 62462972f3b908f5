"""Resume: kill -9 the ingestion process mid-download, rerun, and compare with a clean run."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geo.mapillary import MapillarySource
from geo.mapillary.download import store_name, write_atomically
from geo.mapillary.manifest import Manifest
from tests.fake_mapillary import jpeg_for
from tests.fake_mapillary.fixtures import FAST, TOKEN, city, city_bbox, fake, mly_env  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]


def store_files(store: Path) -> dict[str, str]:
    """Every file in the store (hidden ones too) and its sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.iterdir()) if p.is_file()}


def fetched_count(manifest: Path) -> int:
    if not manifest.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM fetched").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def start_ingest(fake, bbox, store: Path, manifest: Path, *options: str) -> subprocess.Popen:
    env = {**os.environ, "MAPILLARY_GRAPH_URL": fake.url, "MAPILLARY_TILES_URL": fake.url,
           "MAPILLARY_ACCESS_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "geo.mapillary", "--bbox", str(bbox), "--store", str(store), "--manifest",
               str(manifest), "--no-progress", *(f"-o{k}={v}" for k, v in FAST.items() if k != "thumbs_rpm"),
               *options]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kill_after", [1, 40])
def test_sigkill_mid_download_then_rerun_equals_a_clean_run(tmp_path, city, mly_env, kill_after):
    bbox = city_bbox(city)
    killed_store, killed_manifest = tmp_path / "killed" / "images", tmp_path / "killed" / "manifest.sqlite"
    # thumbs_rpm=1200 (20 per second) keeps the download running long enough to be killed in the middle
    process = start_ingest(mly_env, bbox, killed_store, killed_manifest, "-othumbs_rpm=1200", "-oconcurrency=4")
    deadline = time.monotonic() + 60
    while fetched_count(killed_manifest) < kill_after and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"ingestion ended before it could be killed: {process.communicate()}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    mly_env.wait_idle()
    before = store_files(killed_store)
    assert 0 < len([n for n in before if n.endswith(".jpg") and not n.startswith(".")]) < len(city.images)
    served_before = mly_env.thumbs_served.copy()

    rerun = start_ingest(mly_env, bbox, killed_store, killed_manifest)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert '"failures": 0' in out
    served_by_rerun = mly_env.thumbs_served - served_before

    clean_store = tmp_path / "clean" / "images"
    clean = MapillarySource(FAST).ingest(bbox, clean_store, tmp_path / "clean" / "manifest.sqlite", progress=False)
    expected_ids = {i["id"] for i in city.images}
    assert set(clean.images["image_id"]) == expected_ids

    after = store_files(killed_store)
    assert after == store_files(clean_store)  # same names, same bytes, no leftover temporary files
    assert set(Manifest(killed_manifest).fetched()) == expected_ids
    kept = {n.removesuffix(".jpg") for n in before if n.endswith(".jpg") and not n.startswith(".")}
    # exactly what was missing was fetched again, each image once
    assert set(served_by_rerun) == expected_ids - kept
    assert set(served_by_rerun.values()) == {1}


def test_a_file_renamed_but_not_recorded_is_verified_and_adopted(tmp_path, city, mly_env):
    store, manifest = tmp_path / "images", tmp_path / "manifest.sqlite"
    first = sorted(i["id"] for i in city.images)[0]
    store.mkdir()
    write_atomically(jpeg_for(first, "1024"), store / store_name(first))  # as if killed right after the rename
    (store / f".{store_name(sorted(i['id'] for i in city.images)[1])}.partial").write_bytes(b"\xff\xd8half")
    result = MapillarySource(FAST).ingest(city_bbox(city), store, manifest, progress=False)
    assert len(result.images) == len(city.images) and result.failures.empty
    assert first not in mly_env.thumbs_served  # adopted, not downloaded again
    assert not list(store.glob(".*.partial"))


def test_a_recorded_file_that_changed_on_disk_is_fetched_again(tmp_path, city, mly_env):
    store, manifest = tmp_path / "images", tmp_path / "manifest.sqlite"
    source = MapillarySource(FAST)
    source.ingest(city_bbox(city), store, manifest, progress=False)
    victim = sorted(i["id"] for i in city.images)[0]
    (store / store_name(victim)).write_bytes(b"\xff\xd8\xff broken")
    result = source.ingest(city_bbox(city), store, manifest, progress=False)
    assert result.failures.empty and mly_env.thumbs_served[victim] == 2
    assert (store / store_name(victim)).read_bytes() == jpeg_for(victim, "1024")
