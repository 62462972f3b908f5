"""A folder run reads the user's images where they are: nothing copied, nothing written into the folder,
and the same outputs as a run that copies them (``--copy-images``). Both runs take an ``--area`` polygon
with a hole, so the area also travels through the whole flow (images and segments outside it counted).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from geo.imagery import SAMPLE_AREA
from tests.test_area import OUTSIDE, write_boundary

pytestmark = pytest.mark.timeout(900)
BBOX = "9.16,48.76,9.18,48.78"


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (files and folders) with its mtime, size and, for files, sha256."""
    out = {".": ("dir", folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(folder))] = (path.is_dir(), stat.st_mtime_ns, stat.st_size, stat.st_mode, digest)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness):
    from flows.city_audit import audit

    root = tmp_path_factory.mktemp("in-place")
    folder = root / "my-photos"
    shutil.copytree(SAMPLE_AREA / "images", folder / "2023" / "walk")
    meta = pd.read_parquet(SAMPLE_AREA / "images.parquet")
    meta["path"] = ["2023/walk/" + Path(p).name for p in meta["path"]]
    meta.drop(columns=["sha256"]).to_parquet(folder / "images.parquet")
    boundary = write_boundary(root / "stuttgart-west.gpkg")
    before = snapshot(folder)
    common = dict(area_file=str(boundary), bbox=BBOX, source="folder", images=str(folder), model="tiny", device="cpu")
    in_place = audit(out=str(root / "in-place"), **common)
    copied = audit(out=str(root / "copied"), copy_images=True, **common)
    return folder, before, in_place, copied


def test_the_users_folder_is_not_written_to(runs):
    folder, before, _, _ = runs
    assert snapshot(folder) == before  # same files, same mtimes, same checksums, no new file


def test_nothing_is_copied_and_paths_point_at_the_users_files(runs):
    folder, _, in_place, copied = runs
    store = Path(in_place["outputs"]["image_store"])
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]
    images = gpd.read_parquet(Path(in_place["outputs"]["images"]))
    assert len(images) == 19 - len(OUTSIDE)
    assert all(Path(p).is_absolute() and Path(p).resolve().is_relative_to(folder.resolve()) for p in images.path)
    copies = gpd.read_parquet(Path(copied["outputs"]["images"]))
    assert sorted(p.name for p in Path(copied["outputs"]["image_store"]).iterdir()) == sorted(copies.path)


def test_outputs_equal_a_copied_runs(runs):
    _, _, in_place, copied = runs
    for key in ("images", "matched_images", "segments", "segments_with_predictions", "predictions", "failures"):
        assert in_place[key] == copied[key], key
    for name in ("segments", "images"):
        a = gpd.read_parquet(in_place["outputs"][name]).drop(columns=["path", "fetched_at", "run_id"], errors="ignore")
        b = gpd.read_parquet(copied["outputs"][name]).drop(columns=["path", "fetched_at", "run_id"], errors="ignore")
        pd.testing.assert_frame_equal(a.sort_index(axis=1), b.sort_index(axis=1), check_like=True)
    a = gpd.read_parquet(in_place["outputs"]["images"]).set_index("image_id")
    b = gpd.read_parquet(copied["outputs"]["images"]).set_index("image_id")
    assert (a.sha256 == b.sha256.loc[a.index]).all()  # each file hashed once, the same bytes either way


def test_the_area_travelled_through_the_flow_and_is_counted(runs):
    _, _, in_place, _ = runs
    manifest = json.loads(Path(in_place["outputs"]["manifest"]).read_text())
    ingest = manifest["counts"]["ingest"]
    assert ingest["not_selected"] == {"outside area": len(OUTSIDE)} and ingest["downloaded"] == 19 - len(OUTSIDE)
    assert ingest["segments_outside_area"] > 0
    assert manifest["parameters"]["area"]["area_file"].endswith("stuttgart-west.gpkg")
    images = gpd.read_parquet(Path(in_place["outputs"]["images"]))
    assert set(images.image_id).isdisjoint(OUTSIDE)


def test_the_map_links_thumbnails_to_the_files_in_place(runs):
    folder, _, in_place, _ = runs
    page = Path(in_place["outputs"]["map_html"]).read_text(encoding="utf-8")
    assert (folder / "2023" / "walk").resolve().as_uri() in page
