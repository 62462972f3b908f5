"""Imagery sources: bbox filtering, folder metadata read in place, one draft decode per image, atomic idempotent copies."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from geo.bbox import parse_bbox
from geo.imagery import ImagerySourceError, LocalFolderSource, collect_images, make_source, SAMPLE_AREA

SAMPLE = parse_bbox("9.16,48.76,9.18,48.78")


def _folder_with_sample(tmp_path, n=4, fmt="csv"):
    meta = pd.read_parquet(SAMPLE_AREA / "images.parquet").head(n)
    folder = tmp_path / "collection"
    (folder / "pics").mkdir(parents=True)
    for p in meta["path"]:
        shutil.copy(SAMPLE_AREA / p, folder / "pics" / p.split("/")[-1])
    meta = meta.assign(path=["pics/" + p.split("/")[-1] for p in meta["path"]]).drop(columns=["sha256"])
    if fmt == "csv":
        meta.to_csv(folder / "images.csv", index=False)
    else:
        meta.to_parquet(folder / "images.parquet")
    return folder, meta


def test_sample_source_filters_to_the_bbox(tmp_path):
    everything = collect_images(make_source("sample"), SAMPLE, tmp_path / "a", progress=False)
    assert len(everything.images) == 19 and everything.failures.empty
    north = parse_bbox("9.16,48.77,9.18,48.78")
    part = collect_images(make_source("sample"), north, tmp_path / "b", progress=False)
    assert 0 < len(part.images) < 19
    assert part.images.lat.between(48.77, 48.78).all()
    assert {p.name for p in (tmp_path / "b").iterdir()} == set(part.images.path)


def test_store_records_contract_fields(tmp_path):
    images = collect_images(make_source("sample"), SAMPLE, tmp_path, progress=False).images
    reference = pd.read_parquet(SAMPLE_AREA / "images.parquet").set_index("image_id")
    row = images.set_index("image_id").loc["825751065820694"]
    assert row.sha256 == reference.loc["825751065820694", "sha256"]
    assert (row.width, row.height) == (1024, 768)
    assert not row.is_pano and row.camera_type == "perspective"
    assert str(row.captured_at.tz) == "UTC" and pd.notna(row.fetched_at)


def test_collect_is_idempotent_and_leaves_no_partial_files(tmp_path):
    source = make_source("sample")
    first = collect_images(source, SAMPLE, tmp_path, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    second = collect_images(source, SAMPLE, tmp_path, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes  # nothing rewritten
    assert second.images.image_id.tolist() == first.images.image_id.tolist()
    assert not list(tmp_path.glob(".*partial"))


def test_a_damaged_file_in_the_store_is_replaced(tmp_path):
    source = make_source("sample")
    images = collect_images(source, SAMPLE, tmp_path, progress=False).images
    victim = tmp_path / images.path[0]
    victim.write_bytes(victim.read_bytes()[:100])
    again = collect_images(source, SAMPLE, tmp_path, progress=False)
    assert again.failures.empty
    assert (tmp_path / images.path[0]).read_bytes() == (SAMPLE_AREA / "images" / images.path[0]).read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_local_folder_source(tmp_path, fmt):
    folder, meta = _folder_with_sample(tmp_path, fmt=fmt)
    result = collect_images(make_source("folder", folder), SAMPLE, tmp_path / "store", progress=False)
    assert sorted(result.images.image_id) == sorted(meta.image_id)
    assert set(result.images.source) == {"mapillary"}


@pytest.mark.parametrize("copy", [False, True])
def test_corrupt_truncated_and_missing_images_are_failures_not_crashes(tmp_path, copy):
    folder, meta = _folder_with_sample(tmp_path, n=5)
    (folder / meta.path[0]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / meta.path[1]).unlink()
    whole = (folder / meta.path[2]).read_bytes()
    (folder / meta.path[2]).write_bytes(whole[:-200])  # a truncated JPEG: the draft decode must still refuse it
    store = tmp_path / "store"
    result = collect_images(make_source("folder", folder, copy_images=copy), SAMPLE, store, progress=False)
    assert len(result.images) == 2
    reasons = dict(zip(result.failures.item_id, result.failures.reason))
    assert set(reasons) == {meta.image_id[0], meta.image_id[1], meta.image_id[2]}
    assert "does not exist" in reasons[meta.image_id[1]]
    assert reasons[meta.image_id[2]].startswith("corrupt image") and "truncated" in reasons[meta.image_id[2]]
    assert set(result.failures.stage) == {"collect"}
    if copy:
        assert sorted(p.name for p in store.iterdir()) == sorted(result.images.path)  # nothing half-written left
    else:
        assert not store.exists() or not list(store.iterdir())  # read in place: nothing copied
        assert all(Path(p).is_absolute() and Path(p).is_relative_to(folder) for p in result.images.path)


def test_image_size_uses_one_draft_decode_and_refuses_truncation():
    from geo.imagery import image_size

    data = (SAMPLE_AREA / "images" / "1022073649539576.jpg").read_bytes()
    assert image_size(data) == (1024, 512)  # the full size, although decoded at 1/8
    for cut in (len(data) // 2, len(data) - 10):
        with pytest.raises(OSError, match="truncated"):
            image_size(data[:cut])


def test_folder_source_errors_name_the_problem(tmp_path):
    with pytest.raises(ImagerySourceError, match="does not exist"):
        LocalFolderSource(tmp_path / "nope")
    with pytest.raises(ImagerySourceError, match="has no images.parquet or images.csv"):
        LocalFolderSource(tmp_path)
    (tmp_path / "images.csv").write_text("image_id,lon\n1,9.17\n")
    with pytest.raises(ImagerySourceError, match=r"missing required column\(s\) \['lat', 'path'\]"):
        make_source("folder", tmp_path).discover(SAMPLE)
    (tmp_path / "images.csv").write_text("image_id,lon,lat,path\n1,9.17,48.77,a.jpg\n1,9.17,48.77,b.jpg\n")
    with pytest.raises(ImagerySourceError, match="unique"):
        make_source("folder", tmp_path).discover(SAMPLE)
    (tmp_path / "images.csv").write_text("image_id,lon,lat,path\n1,east,48.77,a.jpg\n")
    with pytest.raises(ImagerySourceError, match="'lon' cannot be read"):
        make_source("folder", tmp_path).discover(SAMPLE)
    with pytest.raises(ImagerySourceError, match="missing --images"):
        make_source("folder")
    with pytest.raises(ImagerySourceError, match="choose from sample, folder"):
        make_source("flickr")


# paths stay inside the folder; rows with unusable coordinates are failure rows --------------------
pytestmark = pytest.mark.timeout(120)


def _adds_up(result):
    c = result.counts
    return (c["discovered"] == c["selected"] + sum(c["not_selected"].values()) + c["discover_failed"]
            and c["selected"] == c["downloaded"] + c["download_failed"]
            and sum(c["failed"].values()) == len(result.failures) == c["discover_failed"] + c["download_failed"])


@pytest.mark.parametrize("escape", ["../outside.jpg", "pics/../../outside.jpg", "ABSOLUTE", "LINK"])
def test_paths_leading_outside_the_folder_are_failure_rows(tmp_path, escape):
    folder, meta = _folder_with_sample(tmp_path)
    outside = tmp_path / "outside.jpg"
    shutil.copy(folder / meta.path[0], outside)  # a real image: following the path would "work"
    if escape == "ABSOLUTE":
        escape = str(outside)
    elif escape == "LINK":
        (folder / "pics" / "link.jpg").symlink_to(outside)
        escape = "pics/link.jpg"
    meta.loc[0, "path"] = escape
    meta.to_csv(folder / "images.csv", index=False)
    store = tmp_path / "store"
    result = collect_images(make_source("folder", folder), SAMPLE, store, progress=False)
    assert meta.image_id[0] not in set(result.images.image_id) and len(result.images) == len(meta) - 1
    reasons = dict(zip(result.failures.item_id, result.failures.reason))
    assert reasons[meta.image_id[0]].startswith("path outside the folder")
    assert _adds_up(result) and result.counts["failed"] == {"path outside the folder": 1}
    assert not any(Path(p).resolve() == outside.resolve() for p in result.images.path)  # not read from outside
    copied = collect_images(make_source("folder", folder, copy_images=True), SAMPLE, tmp_path / "store3", progress=False)
    assert len(list((tmp_path / "store3").iterdir())) == len(meta) - 1  # nothing was copied from outside
    opted_in = collect_images(make_source("folder", folder, allow_outside=True), SAMPLE,
                              tmp_path / "store2", progress=False)
    assert len(opted_in.images) == len(meta) and opted_in.failures.empty and _adds_up(opted_in)


def test_rows_with_unusable_coordinates_or_paths_are_failure_rows(tmp_path):
    folder, meta = _folder_with_sample(tmp_path, n=6)
    meta["lon"] = meta["lon"].astype(float)
    meta.loc[0, "lon"] = None
    meta.loc[1, "lat"] = float("nan")
    meta.loc[2, "lon"] = 200.0
    meta.loc[3, "lat"] = -95.0
    meta.loc[4, "path"] = ""
    meta.to_csv(folder / "images.csv", index=False)
    result = collect_images(make_source("folder", folder), SAMPLE, tmp_path / "store", progress=False)
    assert len(result.images) == 1 and _adds_up(result)
    assert result.counts["failed"] == {"no geometry": 2, "coordinates out of range": 2, "no path": 1}
    assert result.counts["discovered"] == 6


def test_counts_of_a_plain_collection_add_up(tmp_path):
    folder, meta = _folder_with_sample(tmp_path)
    (folder / meta.path[1]).unlink()
    result = collect_images(make_source("folder", folder), SAMPLE, tmp_path / "store", progress=False, max_images=3)
    assert _adds_up(result)
    assert result.counts["not_selected"] == {"beyond max_images": 1}
    assert result.counts["failed"] == {"missing file": 1}
