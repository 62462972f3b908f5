"""The city-audit flow on an OSM extract: PBF roads, heading-aware matching, year slices, tiles."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geo.bbox import parse_bbox
from geo.imagery import SAMPLE_AREA
from geo.osm import read_osm_road_segments
from warehouse.db import connect

PBF = Path(__file__).parent / "data" / "pyrosm_test.osm.pbf"
BBOX = "26.94,60.525,26.96,60.535"


@pytest.fixture(scope="module")
def pbf_run(tmp_path_factory, prefect_harness):
    """Four sample photos placed in Finland: three on OSM roads (two years), one far from any road."""
    from flows.city_audit import audit

    segments = read_osm_road_segments(PBF, parse_bbox(BBOX)).to_crs("EPSG:32635")
    folder = tmp_path_factory.mktemp("finland-images")
    photos = sorted((SAMPLE_AREA / "images").glob("*.jpg"))[:4]
    points = [segments.geometry.iloc[k].interpolate(0.5, normalized=True) for k in (0, len(segments) // 2, len(segments) - 1)]
    tree = shapely.STRtree(segments.geometry.to_numpy())
    xmin, ymin, xmax, ymax = gpd.GeoSeries(points, crs="EPSG:32635").total_bounds
    grid = [shapely.Point(x, y) for x in np.linspace(xmin, xmax, 40) for y in np.linspace(ymin, ymax, 40)]
    far = max(grid, key=lambda p: tree.query_nearest(p, return_distance=True)[1][0])
    lonlat = gpd.GeoSeries(points + [far], crs="EPSG:32635").to_crs("EPSG:4326")
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    pd.DataFrame({"image_id": [p.stem for p in photos], "path": [p.name for p in photos],
                  "lon": lonlat.x, "lat": lonlat.y, "is_pano": True, "compass_angle": 0.0,
                  "captured_at": ["2022-06-01T10:00:00Z", "2023-06-01T10:00:00Z", "2023-07-01T10:00:00Z", "2023-08-01T10:00:00Z"],
                  }).to_parquet(folder / "images.parquet")
    out = tmp_path_factory.mktemp("pbf-run")
    summary = audit(bbox=BBOX, source="folder", images=str(folder), roads=str(PBF), model="tiny", out=str(out),
                         device="cpu", max_segment_length_m=80, by_year=True, tiles=True)
    return summary, photos


def test_flow_reads_roads_from_the_pbf(pbf_run):
    summary, photos = pbf_run
    assert summary["images"] == 4 and summary["matched_images"] == 3
    with connect(Path(summary["out"]) / "audit.duckdb", read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT segment_id FROM segments").fetchall()]
        assert ids and all(i.startswith("osm:") for i in ids)
        assert con.execute("SELECT max(length_m) FROM segments").fetchone()[0] <= 80 * 1.001
        reason = con.execute("SELECT image_id, reason FROM unmatched_images").fetchall()
        assert reason[0][0] == photos[3].stem and reason[0][1].startswith("no segment within 25 m")
        years = con.execute("SELECT DISTINCT capture_year FROM segment_attributes_by_year ORDER BY 1").fetchall()
        assert years == [(2022,), (2023,)]


def test_flow_writes_tiles_and_all_outputs(pbf_run):
    summary, _ = pbf_run
    outputs = summary["outputs"]
    for name in ("segments", "images", "geopackage", "styles", "raster", "map_png", "map_html", "report", "segment_tiles"):
        assert Path(outputs[name]).exists(), name
    tiled = gpd.read_parquet(outputs["segment_tiles"])
    assert len(tiled) == len(gpd.read_parquet(outputs["segments"])) and tiled["tile"].astype(str).str.startswith("14_").all()
    assert "no segment within 25 m" in Path(outputs["report"]).read_text()
