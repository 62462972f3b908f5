"""Every planner output of the sample run, read back by geopandas, DuckDB, pyogrio and rasterio."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from pyproj import Transformer
from shapely.geometry import LineString, Point

from classify.schema import ATTRIBUTES
from warehouse.db import connect
from warehouse.export import tile_keys
from warehouse.publish import publish_run

gpv = pytest.importorskip("geoparquet_validator")
CLASSES = {name: a.classes for name, a in ATTRIBUTES.items()}


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run["out"])


@pytest.fixture(scope="module")
def database(run_dir):
    with connect(run_dir / "audit.duckdb", read_only=True) as con:
        yield con


@pytest.fixture(scope="module")
def tiled(run_dir, tmp_path_factory) -> Path:
    """The sample run published twice into one folder, as two workers with different run ids would."""
    out = tmp_path_factory.mktemp("tiled")
    for run_id in ("worker-a", "worker-b"):
        publish_run(run_dir / "audit.duckdb", out, CLASSES, metric_crs="EPSG:32632", run_id=run_id,
                    model_trained=False, partition_by_tile=True, cell_size_m=100)
    return out


def test_the_flow_lists_every_output(sample_run):
    outputs = sample_run["outputs"]
    for name in ("segments", "images", "geopackage", "styles", "raster", "map_png", "map_html", "report", "database", "manifest"):
        assert Path(outputs[name]).exists(), name
    manifest = json.loads(Path(outputs["manifest"]).read_text())
    assert manifest["outputs"]["geopackage"] == outputs["geopackage"]


@pytest.mark.parametrize("name", ["segments.parquet", "images.parquet"])
def test_geoparquet_passes_the_validator(run_dir, name):
    report = gpv.check(str(run_dir / name))
    assert report["version"] == "1.1.0" and report["sampled"] is False
    assert gpv.failed(report) == [], report["outcomes"]
    covering = {o["id"]: o["status"] for o in report["outcomes"] if o["id"].startswith("/conf/covering/")}
    assert covering and set(covering.values()) == {"pass"}, covering


def test_segments_read_back_by_geopandas_and_duckdb(run_dir, database):
    segments = gpd.read_parquet(run_dir / "segments.parquet")
    assert segments.crs.to_epsg() == 4326 and set(segments.geom_type) == {"LineString"}
    for attribute in CLASSES:
        for field in ("label", "share", "share_ci_low", "share_ci_high", "mean_confidence", "label_counts"):
            assert f"{attribute}_{field}" in segments.columns
    expected = database.execute("SELECT count(*), count(DISTINCT segment_id) FROM segments").fetchone()
    assert len(segments) == expected[0] == segments["segment_id"].nunique()
    matched = database.execute("SELECT count(*) FROM matches").fetchone()[0]
    assert segments["n_images"].sum() == matched
    labelled = segments.dropna(subset=["weather_label"])
    assert (labelled["weather_share_ci_low"] <= labelled["weather_share"]).all()
    assert (labelled["weather_share"] <= labelled["weather_share_ci_high"]).all()
    counts = labelled["weather_label_counts"].map(json.loads)
    assert (counts.map(lambda c: sum(c.values())) == labelled["n_images"]).all()
    rows = database.execute("""
        SELECT count(*), sum(n_images), count(*) FILTER (WHERE bbox.xmin <= bbox.xmax), any_value(ST_GeometryType(geometry))
        FROM read_parquet($p)""", {"p": str(run_dir / "segments.parquet")}).fetchone()
    assert rows[:3] == (len(segments), matched, len(segments)) and rows[3] == "LINESTRING"


def test_images_read_back_with_their_match(run_dir, database):
    images = gpd.read_parquet(run_dir / "images.parquet")
    assert images.crs.to_epsg() == 4326 and set(images.geom_type) == {"Point"}
    assert len(images) == database.execute("SELECT count(*) FROM images").fetchone()[0]
    matched = images.dropna(subset=["segment_id"])
    assert matched["unmatched_reason"].isna().all()
    assert (images["segment_id"].isna() == images["unmatched_reason"].notna()).all()
    assert (matched["distance_m"] <= 25).all()
    non_pano = matched[~matched["is_pano"].astype(bool) & matched["compass_angle"].notna()]
    assert non_pano["heading_difference_deg"].between(0, 90).all() and matched[matched["is_pano"].astype(bool)]["heading_difference_deg"].isna().all()


def test_geopackage_read_back_by_pyogrio_and_duckdb(run_dir, database):
    path = run_dir / "segments.gpkg"
    layers = {name: kind for name, kind in pyogrio.list_layers(path)}
    assert layers == {"segments": "LineString", "images": "Point", "layer_styles": None}
    styles = pyogrio.read_dataframe(path, layer="layer_styles")
    assert set(styles["f_table_name"]) == {"segments", "images"}
    segment_styles, image_styles = styles[styles["f_table_name"] == "segments"], styles[styles["f_table_name"] == "images"]
    assert sorted(segment_styles["styleName"]) == sorted(CLASSES)
    assert segment_styles.set_index("styleName")["useAsDefault"].astype(bool).to_dict()["weather"]
    assert segment_styles["useAsDefault"].astype(bool).sum() == 1
    assert image_styles["styleName"].tolist() == ["weather"] and image_styles["useAsDefault"].astype(bool).all()
    assert image_styles["styleQML"].iloc[0] == (run_dir / "styles" / "images.qml").read_text(encoding="utf-8")
    assert (styles["f_geometry_column"] == "geom").all()
    info = pyogrio.read_info(path, layer="segments")
    n_segments = database.execute("SELECT count(*) FROM segments").fetchone()[0]
    assert info["features"] == n_segments and "EPSG:4326" in info["crs"]
    assert "weather_label" in info["fields"]
    images = pyogrio.read_dataframe(path, layer="images")
    assert len(images) == database.execute("SELECT count(*) FROM images").fetchone()[0]
    assert database.execute("SELECT count(*) FROM ST_Read($p, layer := 'segments')", {"p": str(path)}).fetchone()[0] == n_segments


def test_qml_styles_categorise_every_class(run_dir):
    segments_columns = set(gpd.read_parquet(run_dir / "segments.parquet").columns)
    for attribute, classes in CLASSES.items():
        root = ET.parse(run_dir / "styles" / f"{attribute}.qml").getroot()
        renderer = root.find("renderer-v2")
        assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") in segments_columns
        values = [c.get("value") for c in renderer.find("categories")]
        assert values == [*classes, ""]
        symbols = {s.get("name") for s in renderer.find("symbols")}
        assert {c.get("symbol") for c in renderer.find("categories")} == symbols


def test_coverage_raster_counts_and_shares(run_dir, database):
    n_images = database.execute("SELECT count(*) FROM images").fetchone()[0]
    with rasterio.open(run_dir / "coverage.tif") as src:
        assert src.crs.to_epsg() == 32632 and src.res == (50.0, 50.0)
        assert src.count == 1 + sum(len(c) for c in CLASSES.values())
        assert src.descriptions[0] == "image_count" and src.descriptions[1] == "weather=clear"
        bands = src.read()
        assert src.transform.c % 50 == 0 and src.transform.f % 50 == 0  # grid snapped to whole cells
    assert np.nansum(bands[0]) == n_images
    covered = ~np.isnan(bands[0])
    start = 1
    for classes in CLASSES.values():
        shares = bands[start:start + len(classes)]
        assert np.allclose(shares[:, covered].sum(axis=0), 1.0)
        assert np.isnan(shares[:, ~covered]).all()
        start += len(classes)


def test_maps_and_report(run_dir, database):
    png = (run_dir / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    html = (run_dir / "map.html").read_text()
    assert "leaflet" in html.lower() and "weather (dominant label)" in html
    some_segment = database.execute("SELECT segment_id FROM matches ORDER BY segment_id LIMIT 1").fetchone()[0]
    assert some_segment in html
    report = (run_dir / "report.md").read_text()
    images, matched = database.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM matches)").fetchone()
    assert f"| images | {images} |" in report and f"| {matched} |" in report
    assert "UNTRAINED MODEL" in report and "### weather" in report


def test_tile_keys_match_web_mercator():
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    frame = gpd.GeoDataFrame(geometry=[Point(9.17, 48.77), LineString([(9.16, 48.76), (9.18, 48.78)])], crs="EPSG:4326")
    size = 2 * 20037508.342789244 / 2 ** 14
    expected = []
    for lon, lat in [(9.17, 48.77), (9.17, 48.77)]:  # the line's midpoint
        x, y = to_merc.transform(lon, lat)
        expected.append(f"14_{math.floor((x + 20037508.342789244) / size)}_{math.floor((20037508.342789244 - y) / size)}")
    assert tile_keys(frame).tolist() == expected


def test_tile_partitions_merge_across_workers(tiled, database):
    n_segments = database.execute("SELECT count(*) FROM segments").fetchone()[0]
    parts = sorted((tiled / "tiles" / "segments").glob("tile=*/*.parquet"))
    assert {p.name for p in parts} == {"worker-a.parquet", "worker-b.parquet"}
    assert gpv.failed(gpv.check(str(parts[0]))) == []
    merged = gpd.read_parquet(tiled / "tiles" / "segments")
    assert len(merged) == 2 * n_segments and merged.drop_duplicates("segment_id").shape[0] == n_segments
    assert (merged.groupby("segment_id")["tile"].nunique() == 1).all()
    count, distinct = database.execute(
        "SELECT count(*), count(DISTINCT segment_id) FROM read_parquet($glob, hive_partitioning := true) WHERE tile LIKE '14_%'",
        {"glob": str(tiled / "tiles" / "segments" / "*" / "*.parquet")}).fetchone()
    assert (count, distinct) == (2 * n_segments, n_segments)
    images = gpd.read_parquet(tiled / "tiles" / "images")
    assert len(images) == 2 * database.execute("SELECT count(*) FROM images").fetchone()[0]
    with rasterio.open(tiled / "coverage.tif") as src:
        assert src.res == (100.0, 100.0)


def test_a_rerun_of_a_tile_part_leaves_no_stale_file(tmp_path):
    """write_tiles (pyarrow hive dataset): the part's old files go, other parts stay, files are valid GeoParquet."""
    import pyarrow.parquet as pq

    from warehouse.export import write_tiles

    far = [LineString([(9.16 + i * 0.02, 48.76), (9.161 + i * 0.02, 48.761)]) for i in range(3)]
    frame = gpd.GeoDataFrame({"segment_id": ["a", "b", "c"], "v": [1.0, 2.0, 3.0]}, geometry=far, crs="EPSG:4326")
    folder = tmp_path / "tiles"
    first = write_tiles(frame, folder, "run-a")
    other = write_tiles(frame.iloc[2:], folder, "run-b")
    assert len(first) == 3 and len(other) == 1 and {p.name for p in first} == {"run-a.parquet"}
    report = gpv.check(str(first[0]))
    assert report["version"] == "1.1.0" and gpv.failed(report) == [], report["outcomes"]
    schema = pq.read_schema(first[0])
    assert "tile" not in schema.names and "bbox" in schema.names, "the tile lives in the path only"
    again = write_tiles(frame.iloc[:1], folder, "run-a")
    assert len(again) == 1 and sorted(folder.glob("*/run-a.parquet")) == again
    assert sorted(folder.glob("*/run-b.parquet")) == other
    merged = gpd.read_parquet(folder)
    assert sorted(merged["segment_id"]) == ["a", "c"] and set(merged["tile"]) == set(tile_keys(frame.iloc[[0, 2]]))
    assert [p.name for p in tmp_path.iterdir()] == ["tiles"], "no scratch folder is left behind"
