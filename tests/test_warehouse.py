"""DuckDB warehouse: offline spatial, nearest-segment matching, per-segment aggregates."""

import math

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pytest
from pyproj import Transformer
from shapely.geometry import LineString

from contracts.tables import PREDICTIONS
from warehouse.build import WILSON_Z_95, build_audit_database
from warehouse.db import connect, spatial_extension_path
from contracts.tables import IMAGES, conform, empty_failures

UTM = "EPSG:32632"
to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
X0, Y0 = 513_000.0, 5_402_000.0  # metres, in Stuttgart


def _lonlat(dx, dy):
    return to_lonlat.transform(X0 + dx, Y0 + dy)


def _segments():
    east_west = LineString([_lonlat(0, 0), _lonlat(200, 0)])  # bearing 90°
    north_south = LineString([_lonlat(300, -100), _lonlat(300, 100)])  # bearing 0°
    return gpd.GeoDataFrame({"segment_id": ["ew", "ns"], "osm_way_id": [1, 2], "highway": ["primary", "residential"],
                             "name": ["East St", "North St"], "length_m": [200.0, 200.0]},
                            geometry=[east_west, north_south], crs="EPSG:4326")


def _images(rows):
    """rows: (image_id, dx_m, dy_m, compass_deg, is_pano, captured_at)"""
    frame = pd.DataFrame(rows, columns=["image_id", "dx", "dy", "compass_angle", "is_pano", "captured_at"])
    lonlat = [_lonlat(dx, dy) for dx, dy in zip(frame.dx, frame.dy)]
    frame["lon"], frame["lat"] = [p[0] for p in lonlat], [p[1] for p in lonlat]
    frame["path"] = frame.image_id + ".jpg"
    return conform(frame, IMAGES, what="test images").to_pandas()


def _predictions(labels):
    """labels: (image_id, attribute, label, confidence)"""
    rows = [{"image_id": i, "attribute": a, "label": lab, "confidence": c, "probabilities": [(lab, c)],
             "method": "zeroshot", "model_id": "test"} for i, a, lab, c in labels]
    return pa.Table.from_pylist(rows, schema=PREDICTIONS)


def _build(tmp_path, images, predictions, max_distance_m=25.0):
    db = tmp_path / "audit.duckdb"
    counts = build_audit_database(db, images=images, segments=_segments(), predictions=predictions,
                                  failures=empty_failures(), run_id="r1", metric_crs=UTM,
                                  max_distance_m=max_distance_m)
    return db, counts


def test_spatial_is_loaded_from_the_package_file_not_downloaded():
    assert spatial_extension_path().name == "spatial.duckdb_extension"
    with connect() as con:
        loaded, mode = con.execute("SELECT loaded, install_mode FROM duckdb_extensions() WHERE extension_name = 'spatial'").fetchone()
        assert loaded and mode != "REPOSITORY"
        assert con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()[0] is False


def test_nearest_segment_within_the_distance_with_heading(tmp_path):
    images = _images([
        ("north-of-ew", 50, 10, 80.0, False, "2024-05-01T10:00Z"),   # 10 m from ew; camera 10° off the road
        ("west-facing", 150, -7, 270.0, False, "2024-05-02T10:00Z"),  # 7 m from ew; looking the other way along it
        ("pano", 300 - 4, 20, 45.0, True, "2024-05-03T10:00Z"),       # 4 m from ns; panorama: no heading
        ("far-away", 100, 60, 0.0, False, "2024-05-04T10:00Z"),       # 60 m from everything
    ])
    db, counts = _build(tmp_path, images, _predictions([]))
    assert (counts.images, counts.segments, counts.matched_images, counts.segments_with_images) == (4, 2, 3, 2)
    with connect(db, read_only=True) as con:
        matches = con.execute("SELECT * FROM matches ORDER BY image_id").df().set_index("image_id")
        unmatched = con.execute("SELECT image_id FROM unmatched_images").fetchall()
    assert matches.segment_id.to_dict() == {"north-of-ew": "ew", "pano": "ns", "west-facing": "ew"}
    assert matches.distance_m.to_dict() == pytest.approx({"north-of-ew": 10, "pano": 4, "west-facing": 7}, abs=0.01)
    assert matches.heading_difference_deg["north-of-ew"] == pytest.approx(10, abs=0.01)
    assert matches.heading_difference_deg["west-facing"] == pytest.approx(0, abs=0.01)
    assert math.isnan(matches.heading_difference_deg["pano"])
    assert unmatched == [("far-away",)]


def test_max_distance_is_respected(tmp_path):
    images = _images([("a", 50, 10, 90.0, False, "2024-05-01T10:00Z")])
    _, counts = _build(tmp_path, images, _predictions([]), max_distance_m=9.9)
    assert counts.matched_images == 0


def _wilson(successes, n, z=WILSON_Z_95):
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_segment_aggregates_dominant_label_share_and_interval(tmp_path):
    images = _images([
        ("a", 20, 3, 90.0, False, "2024-05-01T10:00Z"),
        ("b", 40, 3, 90.0, False, "2024-06-01T10:00Z"),
        ("c", 60, 3, 90.0, False, "2023-01-01T10:00Z"),
        ("d", 300, 5, 0.0, False, "2024-05-01T10:00Z"),
        ("e", 300, 9, 0.0, False, "2024-05-01T11:00Z"),
    ])
    predictions = _predictions([
        ("a", "weather", "clear", 0.9), ("b", "weather", "rainy", 0.6), ("c", "weather", "clear", 0.3),
        ("d", "weather", "snowy", 0.5), ("e", "weather", "clear", 0.7),
    ])
    db, _ = _build(tmp_path, images, predictions)
    with connect(db, read_only=True) as con:
        rows = con.execute("SELECT * FROM segment_attributes ORDER BY segment_id").df().set_index("segment_id")
    ew, ns = rows.loc["ew"], rows.loc["ns"]
    assert (ew.n_images, ew.label, ew.share) == (3, "clear", pytest.approx(2 / 3))
    assert (ew.share_ci_low, ew.share_ci_high) == pytest.approx(_wilson(2, 3))
    assert ew.mean_confidence == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert ew.label_counts == {"clear": 2, "rainy": 1}
    assert str(ew.first_captured_at.date()) == "2023-01-01" and str(ew.last_captured_at.date()) == "2024-06-01"
    assert (ns.label, ns.share) == ("clear", 0.5)  # a tie goes to the alphabetically first label, deterministically
    assert (ns.share_ci_low, ns.share_ci_high) == pytest.approx(_wilson(1, 2))


def test_planner_views_exist(tmp_path):
    images = _images([("a", 20, 3, 90.0, False, "2024-05-01T10:00Z")])
    db, _ = _build(tmp_path, images, _predictions([("a", "quality", "good", 0.8)]))
    with connect(db, read_only=True) as con:
        assert con.execute("SELECT segment_id FROM coverage_gaps").fetchall() == [("ns",)]
        assert con.execute("SELECT segment_id, attribute, label FROM segment_labels").fetchall() == [("ew", "quality", "good")]


def test_duckdb_memory_is_capped_at_1gb_by_default_and_an_out_of_memory_build_says_what_to_do(tmp_path, monkeypatch):
    from warehouse.build import DEFAULT_DUCKDB_MEMORY, DuckDBMemoryError, duckdb_memory

    monkeypatch.delenv("CITY_AUDIT_DUCKDB_MEMORY", raising=False)
    assert duckdb_memory() == DEFAULT_DUCKDB_MEMORY == "1GB"  # spills past it; built 1M images (benchmarks/README.md)
    monkeypatch.setenv("CITY_AUDIT_DUCKDB_MEMORY", "none")
    assert duckdb_memory() is None  # DuckDB's own default (80 % of the memory)
    images = _images([(f"i{k}", k % 100, 5, 0.0, False, "2024-05-01T10:00Z") for k in range(2000)])
    predictions = _predictions([(f"i{k}", a, "clear", 0.9) for k in range(2000) for a in ("weather", "lighting")])
    monkeypatch.setenv("CITY_AUDIT_DUCKDB_MEMORY", "1KB")
    with pytest.raises(DuckDBMemoryError, match=r"ran out of memory while building the run's database: raise "
                                                r"CITY_AUDIT_DUCKDB_MEMORY \(now 1KB; none: DuckDB's default"):
        _build(tmp_path, images, predictions)
    monkeypatch.setenv("CITY_AUDIT_DUCKDB_MEMORY", "lots")
    with pytest.raises(ValueError, match="give a size such as 512MB or 2GB, or none"):
        duckdb_memory()


def test_the_default_memory_cap_is_applied_to_the_build(tmp_path, monkeypatch):
    import duckdb

    from warehouse.build import limit_memory

    monkeypatch.delenv("CITY_AUDIT_DUCKDB_MEMORY", raising=False)
    con = limit_memory(duckdb.connect(str(tmp_path / "x.duckdb")))
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert limit.replace(" ", "") in ("953.6MiB", "1.0GB", "1000.0MB", "976.5MiB"), limit
    assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0].endswith("x.duckdb.tmp")


def test_image_sized_tables_have_no_primary_key_index_but_a_repeated_key_is_refused(tmp_path):
    from warehouse.build import DuplicateRowsError

    images = _images([("a", 20, 3, 90.0, False, "2024-05-01T10:00Z"), ("b", 40, 3, 90.0, False, "2024-05-01T10:00Z")])
    db, _ = _build(tmp_path, images, _predictions([("a", "weather", "clear", 0.9), ("b", "weather", "rain", 0.8)]))
    with connect(db, read_only=True) as con:
        constrained = {t for t, in con.execute("SELECT DISTINCT table_name FROM duckdb_constraints() "
                                               "WHERE constraint_type = 'PRIMARY KEY'").fetchall()}
    assert constrained == {"segments", "segment_attributes", "segment_attributes_by_year"}
    repeated = _predictions([("a", "weather", "clear", 0.9), ("b", "weather", "rain", 0.8), ("a", "weather", "rain", 0.6)])
    with pytest.raises(DuplicateRowsError, match=r"predictions table has 2 rows for image_id='a', "
                                                 r"attribute='weather', run_id='r1'"):
        _build(tmp_path, images, repeated)
    with pytest.raises(DuplicateRowsError, match=r"images table has 2 rows for image_id='a'"):
        _build(tmp_path, pd.concat([images, images.iloc[:1]], ignore_index=True), _predictions([]))
