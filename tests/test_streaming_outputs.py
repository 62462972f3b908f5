"""Flat memory: stages pass the images table on disk and publishing reads the database batch by batch.

The files written batch by batch must be those the whole-table writers give: same rows, columns,
types, GeoParquet metadata, row groups and GeoPackage layers.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest

from classify.schema import ATTRIBUTES
from warehouse import export, frames
from warehouse.db import connect

NAMES = list(ATTRIBUTES)


@pytest.fixture(scope="module")
def database(sample_run) -> Path:
    return Path(sample_run["out"]) / "audit.duckdb"


def test_batches_have_the_types_and_rows_of_one_whole_read(database):
    with connect(database, read_only=True) as con:
        whole = frames.images_frame(con, NAMES)
        parts = list(frames.image_batches(con, NAMES, batch=4))
    assert len(whole) > 8 and len(parts) == -(-len(whole) // 4)
    assert all(list(p.dtypes) == list(whole.dtypes) for p in parts)
    joined = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")
    pd.testing.assert_frame_equal(pd.DataFrame(joined), pd.DataFrame(whole))


def test_streamed_export_writes_the_files_of_the_whole_frame(database, tmp_path, monkeypatch):
    monkeypatch.setattr(frames, "IMAGE_BATCH", 4)
    monkeypatch.setattr(export, "ROW_GROUP_SIZE", 5)
    with connect(database, read_only=True) as con:
        segments, images = frames.segments_frame(con, NAMES), frames.images_frame(con, NAMES)
        whole = export.export_run(segments, images, tmp_path / "whole", metadata={"RUN_ID": "x"})
        export.write_geoparquet(images, tmp_path / "whole" / "images.parquet", row_group_size=5)
        streamed = export.export_run(segments, con, tmp_path / "streamed", metadata={"RUN_ID": "x"},
                                     attributes=NAMES, map_images=4)
    a, b = pq.read_table(whole["images"]), pq.read_table(streamed["images"])
    assert a.schema.equals(b.schema, check_metadata=True)  # GeoParquet metadata too: file bbox of all images
    assert a.equals(b)
    ma, mb = pq.read_metadata(whole["images"]), pq.read_metadata(streamed["images"])
    assert mb.num_row_groups == ma.num_row_groups > 1
    assert [mb.row_group(i).num_rows for i in range(mb.num_row_groups)] == [
        ma.row_group(i).num_rows for i in range(ma.num_row_groups)]
    for layer in ("segments", "images"):
        pd.testing.assert_frame_equal(pyogrio.read_dataframe(whole["geopackage"], layer=layer),
                                      pyogrio.read_dataframe(streamed["geopackage"], layer=layer))
    assert pyogrio.read_info(streamed["geopackage"], layer="images")["dataset_metadata"] == {"RUN_ID": "x"}
    sample = streamed["map_images"]  # every k-th image in image_id order, k = ceil(n / 4)
    step = -(-len(images) // 4)
    assert list(sample["image_id"]) == list(images["image_id"].iloc[::step])
    assert not list((tmp_path / "streamed").glob(".*"))  # no scratch file left


def test_the_flow_hands_on_the_images_table_on_disk(sample_run):
    out = Path(sample_run["out"])
    table = pq.read_table(out / "work" / "images.parquet")
    with connect(out / "audit.duckdb", read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT image_id FROM images ORDER BY image_id").fetchall()]
    assert sorted(table.column("image_id").to_pylist()) == ids


def test_a_collection_on_disk_reads_back_as_it_was(tmp_path):
    from contracts.results import ImageCollection
    from geo.bbox import parse_bbox
    from geo.imagery import collect_images, make_source

    collection = collect_images(make_source("sample"), parse_bbox("9.16,48.76,9.18,48.78"), tmp_path / "s",
                                progress=False)
    on_disk = collection.on_disk(tmp_path / "work" / "images.parquet")
    assert isinstance(on_disk, ImageCollection) and on_disk.images is None
    assert on_disk.image_count == len(collection.images)
    pd.testing.assert_frame_equal(on_disk.image_frame(), collection.images)
    pd.testing.assert_frame_equal(on_disk.image_frame(["image_id", "sha256"]), collection.images[["image_id", "sha256"]])
