"""Road segments in the segments contract: bbox selection, geodesic lengths, file inputs."""

import geopandas as gpd
import pytest
from shapely.geometry import LineString

from geo.bbox import parse_bbox
from geo.roads import RoadSourceError, load_road_segments

SAMPLE = parse_bbox("9.16,48.76,9.18,48.78")


def test_sample_roads_follow_the_contract():
    segments = load_road_segments(SAMPLE)
    assert list(segments.columns) == ["segment_id", "osm_way_id", "highway", "name", "length_m", "geometry"]
    assert len(segments) == 190 and segments.segment_id.is_unique
    assert segments.crs.to_epsg() == 4326
    assert set(segments.geom_type) == {"LineString"}


def test_lengths_agree_with_osmnx_edge_lengths(shared_sample):
    segments = load_road_segments(SAMPLE).set_index("segment_id")
    edges = gpd.read_file(shared_sample / "osm" / "gss_snapped_edges_stuttgart.geojson")  # length in metres
    reference = {f"osm:{u}-{v}-{k}": length for u, v, k, length in zip(edges.u, edges.v, edges.key, edges["length"])}
    for segment_id, length_m in reference.items():
        assert segments.loc[segment_id, "length_m"] == pytest.approx(length_m, rel=0.005, abs=0.05)


def test_bbox_keeps_only_intersecting_segments():
    corner = parse_bbox("9.170,48.770,9.175,48.775")
    segments = load_road_segments(corner)
    assert 0 < len(segments) < 190
    assert all(g.intersects(__import__("shapely").box(*corner.as_list())) for g in segments.geometry)


def test_roads_from_a_vector_file(tmp_path):
    lines = gpd.GeoDataFrame({"osm_way_id": [7, 7, 8], "highway": ["primary"] * 3},
                             geometry=[LineString([(9.17, 48.77), (9.171, 48.77)]),
                                       LineString([(9.171, 48.77), (9.172, 48.77)]),
                                       LineString([(9.17, 48.771), (9.17, 48.772)])], crs="EPSG:4326")
    path = tmp_path / "roads.geojson"
    lines.to_file(path)
    segments = load_road_segments(SAMPLE, path)
    assert segments.segment_id.tolist() == ["osm:7:0", "osm:7:1", "osm:8:0"]
    # 0.001° of longitude at 48.77° N is 73.5 m on the ellipsoid; 0.001° of latitude is 111.2 m
    assert segments.length_m.tolist() == pytest.approx([73.5, 73.5, 111.2], rel=0.005)


def test_road_file_errors(tmp_path):
    with pytest.raises(RoadSourceError, match="does not exist"):
        load_road_segments(SAMPLE, tmp_path / "missing.gpkg")
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy([9.17], [48.77]), crs="EPSG:4326")
    points.to_file(tmp_path / "points.geojson")
    with pytest.raises(RoadSourceError, match="no LineString"):
        load_road_segments(SAMPLE, tmp_path / "points.geojson")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not parquet")
    with pytest.raises(RoadSourceError, match="could not read roads"):
        load_road_segments(SAMPLE, broken)
