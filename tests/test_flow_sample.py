"""End to end: the city-audit flow on the bundled Stuttgart sample, and what it publishes."""

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pytest

from warehouse.build import DEFAULT_HEADING_PENALTY_M
from warehouse.db import connect

from conftest import SAMPLE_BBOX


def test_summary_counts(sample_run):
    assert sample_run["images"] == 19
    assert sample_run["matched_images"] == 19
    assert sample_run["segments"] == 190
    assert 0 < sample_run["segments_with_predictions"] <= 19
    assert sample_run["predictions"] == 19 * 8
    assert sample_run["failures"] == 0
    assert sample_run["model_trained"] is False


def test_run_manifest_says_untrained_and_records_the_run(sample_run):
    manifest = json.loads(Path(sample_run["outputs"]["manifest"]).read_text())
    assert manifest["model_trained"] is False
    assert manifest["model"]["weights"] == "random(seed=0)"
    assert manifest["parameters"]["bbox"] == [9.16, 48.76, 9.18, 48.78]
    assert manifest["counts"]["images"] == 19
    assert set(manifest["timings_s"]) >= {"collect_images", "classify_images", "build_audit_database", "publish_outputs"}
    assert manifest["versions"]["duckdb"] == "1.5.5"
    assert any("Mapillary" in a for a in manifest["attribution"]) and any("OpenStreetMap" in a for a in manifest["attribution"])
    assert manifest["failures"] == []


@pytest.mark.parametrize("name, geometry_type", [("segments.parquet", "LineString"), ("images.parquet", "Point")])
def test_outputs_are_geoparquet_1_1(sample_run, name, geometry_type):
    path = Path(sample_run["out"]) / name
    geo = json.loads(pq.read_metadata(path).metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB"
    assert column["geometry_types"] == [geometry_type]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    xmin, ymin, xmax, ymax = column["bbox"]
    assert 9.15 < xmin < xmax < 9.19 and 48.75 < ymin < ymax < 48.79
    frame = gpd.read_parquet(path)
    assert frame.crs.to_epsg() == 4326 and frame.geom_type.eq(geometry_type).all()
    # the covering column lets readers skip rows by bbox
    assert len(gpd.read_parquet(path, bbox=(9.16, 48.77, 9.18, 48.78))) < len(frame)


def test_duckdb_reads_the_geoparquet_and_the_database(sample_run):
    out = Path(sample_run["out"])
    with connect() as con:
        n, geometry_type = con.execute(
            "SELECT count(*), any_value(ST_GeometryType(geometry)) FROM read_parquet(?)", [str(out / "segments.parquet")]).fetchone()
        assert (n, geometry_type) == (190, "LINESTRING")
    with connect(out / "audit.duckdb", read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"images", "segments", "predictions", "matches", "segment_attributes", "failures",
                "segment_labels", "coverage_gaps", "unmatched_images"} <= tables
        assert con.execute("SELECT count(DISTINCT run_id) FROM predictions").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM segment_attributes").fetchone()[0] == sample_run["segments_with_predictions"] * 8


def test_segment_columns_one_group_per_attribute(sample_run):
    segments = gpd.read_parquet(Path(sample_run["out"]) / "segments.parquet")
    for attribute in ("weather", "lighting_condition", "glare", "reflection", "quality", "view_direction", "platform", "pano_status"):
        for field in ("label", "share", "share_ci_low", "share_ci_high", "mean_confidence"):
            assert f"{attribute}_{field}" in segments.columns
    covered = segments[segments.n_images > 0]
    assert len(covered) == sample_run["segments_with_predictions"]
    assert covered.weather_label.notna().all() and segments[segments.n_images == 0].weather_label.isna().all()
    assert (covered.weather_share_ci_low <= covered.weather_share).all() and (covered.weather_share <= covered.weather_share_ci_high).all()


def test_matches_agree_with_global_streetscapes_snapping(sample_run, shared_sample):
    """GSS snapped the same images to the same OSM edges: our distances must agree."""
    images = gpd.read_parquet(Path(sample_run["out"]) / "images.parquet")
    reference = pd.read_csv(shared_sample / "gss" / "sample_mapping.csv", dtype={"orig_id": str})
    joined = images.merge(reference, left_on="image_id", right_on="orig_id")
    assert len(joined) == 19
    pano = joined[joined.is_pano]
    # panoramas have no heading: plain nearest segment, exactly GSS's snap
    assert pano.distance_m.to_numpy() == pytest.approx(pano.osm_snap_dist_m.to_numpy(), abs=0.05)
    # a perspective camera may prefer a segment it looks along, never a nearer one than the nearest,
    # and never one further than the heading penalty allows
    perspective = joined[~joined.is_pano]
    assert (perspective.distance_m >= perspective.osm_snap_dist_m - 0.05).all()
    assert (perspective.distance_m <= perspective.osm_snap_dist_m + DEFAULT_HEADING_PENALTY_M).all()


def test_a_rerun_reuses_finished_work(sample_run, prefect_harness):
    from flows.city_audit import audit

    out = Path(sample_run["out"])
    before = gpd.read_parquet(out / "images.parquet")
    again = audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=str(out), device="cpu")
    assert again["predictions_reused"] == 19 and again["classification_chunks_reused"] == again["classification_chunks"] == 1
    after = gpd.read_parquet(out / "images.parquet")
    pd.testing.assert_frame_equal(before.drop(columns="geometry"), after.drop(columns="geometry"))
    assert not list(out.rglob("*.partial"))


def test_the_flow_refuses_a_bad_bbox_before_any_work(prefect_harness, tmp_path):
    from flows.city_audit import audit

    with pytest.raises(Exception, match="swapped"):
        audit(bbox="9.18,48.76,9.16,48.78", source="sample", model="tiny", out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_an_empty_area_completes_and_says_why(prefect_harness, tmp_path):
    """A box inside the sample's extent with no image and no road in it: a completed run whose summary,
    run.json and report name the cause (the sample's extent) for each missing part."""
    from flows.city_audit import audit

    summary = audit(bbox="9.1622,48.7634,9.1623,48.7635", source="sample", model="tiny", out=str(tmp_path / "out"))
    assert summary["images"] == 0 and summary["segments"] == 0
    assert [c.split(":")[0] for c in summary["empty_run"]] == ["no images from source sample",
                                                               "no road segments from roads sample"]
    assert all("9.1621,48.7633,9.1755,48.7788" in c for c in summary["empty_run"])
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["empty_run"] == summary["empty_run"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Empty run.**" in report and all(f"> - {c}" in report for c in summary["empty_run"])


def test_a_run_with_images_has_no_empty_run_note(sample_run):
    assert sample_run["empty_run"] == []
    assert "empty_run" not in json.loads(Path(sample_run["outputs"]["manifest"]).read_text())
