"""Road segments from OSM PBF: class filter, splitting at junctions and by length, stable ids.

Hand-made PBFs are written with pyosmium; the real one is the pyrosm test extract (Finland).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pyproj import Geod
from shapely.geometry import Point

from geo.bbox import parse_bbox
from geo.osm import DEFAULT_ROAD_CLASSES, OSMReadError, parse_road_classes, read_osm_road_segments
from geo.roads import load_road_segments

DATA = Path(__file__).parent / "data"
REAL_PBF = DATA / "pyrosm_test.osm.pbf"
REAL_BBOX = parse_bbox("26.93,60.52,26.97,60.54")
GEOD = Geod(ellps="WGS84")
osmium = pytest.importorskip("osmium")


def write_pbf(path: Path, nodes: dict[int, tuple[float, float]], ways: dict[int, tuple[list[int], dict]]) -> Path:
    from osmium.osm.mutable import Node, Way

    writer = osmium.SimpleWriter(str(path))
    for node_id, location in sorted(nodes.items()):
        writer.add_node(Node(id=node_id, location=location))
    for way_id, (refs, tags) in sorted(ways.items()):
        writer.add_way(Way(id=way_id, nodes=refs, tags=tags))
    writer.close()
    return path


HAND_BBOX = parse_bbox("8.99,47.99,9.01,48.01")


@pytest.fixture
def crossing(tmp_path) -> Path:
    """A plus: way 10 west-east and way 20 south-north cross at node 2; footway 30 crosses way 10 at node 7."""
    nodes = {1: (9.000, 48.000), 2: (9.001, 48.000), 3: (9.002, 48.000), 4: (9.001, 47.9995), 5: (9.001, 48.0005),
             6: (9.0005, 47.9995), 7: (9.0005, 48.000), 8: (9.0005, 48.0005)}
    ways = {10: ([1, 7, 2, 3], {"highway": "residential", "name": "East Street"}),
            20: ([4, 2, 5], {"highway": "tertiary"}),
            30: ([6, 7, 8], {"highway": "footway"})}
    return write_pbf(tmp_path / "crossing.osm.pbf", nodes, ways)


def test_ways_split_at_junctions_of_kept_ways_only(crossing):
    segments = read_osm_road_segments(crossing, HAND_BBOX)
    assert list(segments["segment_id"]) == ["osm:10:0", "osm:10:1", "osm:20:0", "osm:20:1"]
    ends = {row.segment_id: (row.geometry.coords[0], row.geometry.coords[-1]) for row in segments.itertuples()}
    junction = (9.001, 48.0)
    assert ends["osm:10:0"][1] == pytest.approx(junction) and ends["osm:10:1"][0] == pytest.approx(junction)
    assert ends["osm:20:0"][1] == pytest.approx(junction) and ends["osm:20:1"][0] == pytest.approx(junction)
    # the footway is not kept, so node 7 is not a junction: way 10's first segment keeps 3 vertices
    assert len(segments.set_index("segment_id").geometry["osm:10:0"].coords) == 3
    assert set(segments["highway"]) == {"residential", "tertiary"}
    assert segments.set_index("segment_id").loc["osm:10:1", "name"] == "East Street"


def test_keeping_footways_adds_their_junctions(crossing):
    segments = read_osm_road_segments(crossing, HAND_BBOX, road_classes=("residential", "footway"))
    assert list(segments["segment_id"]) == ["osm:10:0", "osm:10:1", "osm:10:2", "osm:30:0", "osm:30:1"]


def test_lengths_are_geodesic_and_add_up(crossing):
    segments = read_osm_road_segments(crossing, HAND_BBOX).set_index("segment_id")
    whole_m = GEOD.inv(9.000, 48.0, 9.002, 48.0)[2]
    assert segments.loc[["osm:10:0", "osm:10:1"], "length_m"].sum() == pytest.approx(whole_m, rel=1e-6)
    assert segments.loc["osm:20:0", "length_m"] == pytest.approx(GEOD.inv(9.001, 47.9995, 9.001, 48.0)[2], rel=1e-6)


def test_long_way_split_into_equal_parts_no_longer_than_the_maximum(tmp_path):
    pbf = write_pbf(tmp_path / "long.osm.pbf", {1: (9.000, 48.000), 2: (9.0034, 48.000)},
                    {99: ([1, 2], {"highway": "primary"})})
    whole_m = GEOD.inv(9.000, 48.0, 9.0034, 48.0)[2]  # about 253 m
    segments = read_osm_road_segments(pbf, HAND_BBOX, max_segment_length_m=100)
    assert list(segments["segment_id"]) == ["osm:99:0", "osm:99:1", "osm:99:2"]
    assert segments["length_m"].tolist() == pytest.approx([whole_m / 3] * 3, rel=1e-3)
    assert segments.geometry.iloc[0].coords[-1] == pytest.approx(segments.geometry.iloc[1].coords[0], abs=1e-9)
    assert segments.geometry.iloc[2].coords[-1] == pytest.approx((9.0034, 48.0), abs=1e-9)
    assert len(read_osm_road_segments(pbf, HAND_BBOX, max_segment_length_m=300)) == 1


def test_ids_do_not_depend_on_the_bbox(tmp_path):
    nodes = {i: (9.000 + 0.001 * i, 48.0) for i in range(6)}
    pbf = write_pbf(tmp_path / "street.osm.pbf", nodes, {7: (list(range(6)), {"highway": "residential"})})
    whole = read_osm_road_segments(pbf, HAND_BBOX, max_segment_length_m=50).set_index("segment_id")
    east = read_osm_road_segments(pbf, parse_bbox("9.0035,47.999,9.01,48.001"), max_segment_length_m=50).set_index("segment_id")
    assert len(whole) == 8 and 0 < len(east) < len(whole)
    assert east.index[0] != "osm:7:0"
    for segment_id, row in east.iterrows():
        assert row.geometry.equals_exact(whole.geometry[segment_id], 1e-12)


def test_real_pbf_segments_respect_junctions_and_maximum_length():
    segments = read_osm_road_segments(REAL_PBF, REAL_BBOX, max_segment_length_m=80)
    assert len(segments) > 300 and segments["segment_id"].is_unique
    assert set(segments["highway"]) <= set(DEFAULT_ROAD_CLASSES) and "cycleway" not in set(segments["highway"])
    assert (segments["length_m"] <= 80 * 1.001).all() and (segments["length_m"] > 0).all()
    assert all(segments["segment_id"].str.match(r"^osm:\d+:\d+$"))
    assert all(sid.split(":")[1] == str(way) for sid, way in zip(segments["segment_id"], segments["osm_way_id"]))
    # every vertex shared by two segments' ends is a junction: no segment runs through one
    ends = Counter()
    for line in segments.geometry:
        ends.update([tuple(round(c, 9) for c in line.coords[0]), tuple(round(c, 9) for c in line.coords[-1])])
    for line in segments.geometry:
        for vertex in line.coords[1:-1]:
            key = tuple(round(c, 9) for c in vertex)
            assert ends[key] == 0 or key in (line.coords[0], line.coords[-1]), f"segment runs through junction {key}"


def test_real_pbf_lengths_add_up_to_the_ways(tmp_path):
    split = read_osm_road_segments(REAL_PBF, REAL_BBOX, max_segment_length_m=60)
    whole = read_osm_road_segments(REAL_PBF, REAL_BBOX, max_segment_length_m=1e9)
    assert len(split) > len(whole)
    assert split.groupby("osm_way_id")["length_m"].sum().to_dict() == pytest.approx(
        whole.groupby("osm_way_id")["length_m"].sum().to_dict(), rel=1e-4)


def test_load_road_segments_reads_pbf_paths():
    segments = load_road_segments(REAL_BBOX, str(REAL_PBF), road_classes="residential", max_segment_length_m=150)
    assert set(segments["highway"]) == {"residential"}
    assert list(segments.columns) == ["segment_id", "osm_way_id", "highway", "name", "length_m", "geometry"]
    assert segments.crs.to_epsg() == 4326


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(OSMReadError, match="does not exist"):
        read_osm_road_segments(tmp_path / "nope.osm.pbf", REAL_BBOX)
    with pytest.raises(OSMReadError, match="positive"):
        read_osm_road_segments(REAL_PBF, REAL_BBOX, max_segment_length_m=0)
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(b"not a pbf at all")
    with pytest.raises(OSMReadError, match="could not read"):
        read_osm_road_segments(broken, REAL_BBOX)
    assert parse_road_classes(" primary, secondary ,primary") == ("primary", "secondary")
    assert parse_road_classes(None) == DEFAULT_ROAD_CLASSES
    assert len(read_osm_road_segments(REAL_PBF, parse_bbox("9.0,48.0,9.1,48.1"))) == 0
