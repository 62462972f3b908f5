"""Bounding boxes: both input forms, and each kind of bad box refused with a useful message."""

import pytest

from geo.bbox import BBox, BBoxError, parse_bbox


@pytest.mark.parametrize("raw", [
    "9.16,48.76,9.18,48.78",
    " 9.16, 48.76, 9.18, 48.78 ",
    "[9.16, 48.76, 9.18, 48.78]",
    [9.16, 48.76, 9.18, 48.78],
    (9.16, 48.76, 9.18, 48.78),
    ["9.16", "48.76", "9.18", "48.78"],
])
def test_accepts_string_and_list_forms(raw):
    assert parse_bbox(raw) == BBox(9.16, 48.76, 9.18, 48.78)


@pytest.mark.parametrize("raw, fragment", [
    ("9.16,48.76,9.18", "exactly 4 numbers"),
    ("9.16,48.76,9.18,48.78,1", "exactly 4 numbers"),
    ("9.16,north,9.18,48.78", "is not a number"),
    ("[9.16, 48.76,", "not valid JSON"),
    ('{"min_lon": 1}', "not a list of 4 numbers"),
    ("9.16,nan,9.18,48.78", "not finite"),
    ("9.18,48.76,9.16,48.78", "swapped"),
    ("9.16,48.78,9.18,48.76", "swapped"),
    ("181,48.76,182,48.78", "outside [-180, 180]"),
    ("9.16,-91,9.18,48.78", "outside [-90, 90]"),
    ("48.76,9.16,48.78,91.5", "latitude first"),
    ("9.16,48.76,9.16,48.78", "zero area"),
    ("9.16,48.76,9.18,48.76", "zero area"),
    ("0,0,10,10", "more than the limit"),
])
def test_refuses_bad_boxes_with_the_reason(raw, fragment):
    with pytest.raises(BBoxError) as info:
        parse_bbox(raw)
    assert fragment in str(info.value)


def test_swapped_corners_message_suggests_the_fix():
    with pytest.raises(BBoxError, match=r"did you mean 9.16,48.76,9.18,48.78\?"):
        parse_bbox("9.18,48.78,9.16,48.76")


def test_area_limit_is_configurable():
    assert parse_bbox("0,0,10,10", max_area_km2=None).area_km2 == pytest.approx(1_230_000, rel=0.01)
    with pytest.raises(BBoxError, match="limit of 1 km²"):
        parse_bbox("9.16,48.76,9.18,48.78", max_area_km2=1)


def test_area_and_metric_crs():
    box = parse_bbox("9.16,48.76,9.18,48.78")
    # 0.02° lon x 0.02° lat at 48.77° N: 1.467 km x 2.224 km
    assert box.area_km2 == pytest.approx(1.467 * 2.224, rel=0.01)
    assert box.utm_crs() == "EPSG:32632"
    assert parse_bbox("103.81,1.30,103.82,1.31").utm_crs() == "EPSG:32648"
    assert parse_bbox("-58.5,-34.7,-58.3,-34.5").utm_crs() == "EPSG:32721"


# antimeridian, whole world, exact area, argparse -----------------------------------------------------
pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("raw, halves", [
    ("179.9,-17,-179.9,-16.9", ("179.9,-17,180,-16.9", "-180,-17,-179.9,-16.9")),
    ("179.9,-16.9,-179.9,-17", ("179.9,-17,180,-16.9", "-180,-17,-179.9,-16.9")),  # lats swapped too
    ("-179.9,-17,179.9,-16.9", ("179.9,-17,180,-16.9", "-180,-17,-179.9,-16.9")),  # the 359.8° reading
    ("170,-10,-170,10", ("170,-10,180,10", "-180,-10,-170,10")),
])
def test_boxes_across_the_antimeridian_are_refused_with_both_halves(raw, halves):
    with pytest.raises(BBoxError, match="antimeridian") as info:
        parse_bbox(raw, max_area_km2=None)
    message = str(info.value)
    assert all(half in message for half in halves)
    assert "359.8," not in message.split("separately:")[-1]  # never suggests the box round the globe
    for half in halves:  # the suggestion is usable as given
        parse_bbox(half, max_area_km2=None)


@pytest.mark.parametrize("raw, fragment", [
    ("-180,-90,180,90", "more than the limit"),  # the whole world: about 510 million km²
    ("-180,10,180,10.02", "more than the limit"),  # a 0.02° band round the globe is ~49,000 km²
    ("-180,10,180,10.0001", "spans every longitude"),  # small enough for the limit, still round the globe
    ("-100,10,100,10.0001", "more than half the globe"),
])
def test_whole_world_and_round_the_globe_boxes_are_refused(raw, fragment):
    with pytest.raises(BBoxError, match=fragment):
        parse_bbox(raw)


def test_area_is_exact_everywhere():
    world = BBox(-180, -90, 180, 90).area_km2
    assert world == pytest.approx(510_065_622, rel=1e-6)  # WGS84 surface area
    assert BBox(-180, 10, 180, 10.02).area_km2 == pytest.approx(40_075 * 0.02 * 110.6 * 0.985, rel=0.01)
    hemispheres = BBox(-180, 0, 180, 90).area_km2 + BBox(-180, -90, 180, 0).area_km2
    assert hemispheres == pytest.approx(world)
    east = BBox(170, -10, 180, 10).area_km2
    assert east == pytest.approx(BBox(-180, -10, -170, 10).area_km2)  # same size either side of 180°
    assert BBox(0, 89, 1, 90).area_km2 < BBox(0, 0, 1, 1).area_km2 / 50  # near the pole, not a flat square
    assert parse_bbox("-122.5,37.7,-122.3,37.8").area_km2 == pytest.approx(0.2 * 88.2 * 0.1 * 111.0, rel=0.01)


def test_negative_first_number_works_through_argparse():
    import argparse

    from geo.bbox import bbox_argv

    parser = argparse.ArgumentParser()
    parser.add_argument("--bbox")
    parser.add_argument("--out")
    with pytest.raises(SystemExit):  # what users met: "expected one argument"
        parser.parse_args(["--bbox", "-122.5,37.7,-122.3,37.8"])
    args = parser.parse_args(bbox_argv(["--bbox", "-122.5,37.7,-122.3,37.8", "--out", "x"]))
    assert parse_bbox(args.bbox) == BBox(-122.5, 37.7, -122.3, 37.8) and args.out == "x"
    args = parser.parse_args(bbox_argv(["--bbox", "-58.5 -34.7 -58.3 -34.5"]))
    assert parse_bbox(args.bbox) == BBox(-58.5, -34.7, -58.3, -34.5)
    assert bbox_argv(["--bbox", "--out", "x"]) == ["--bbox", "--out", "x"]  # an option is not joined
    assert bbox_argv(["--", "--bbox", "-1,2,3,4"]) == ["--", "--bbox", "-1,2,3,4"]


def test_fetch_only_cli_takes_a_western_box(tmp_path, monkeypatch, capsys):
    from geo.mapillary.__main__ import main

    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)
    code = main(["--bbox", "-122.42,37.77,-122.41,37.78", "--store", str(tmp_path / "s"), "--no-progress"])
    assert code == 3 and "MAPILLARY_ACCESS_TOKEN" in capsys.readouterr().err  # past argparse and the bbox


# UTM zone from pyproj's EPSG database ------------------------------------------------------------------
def _hand_zone(lon: float, lat: float) -> str:
    """The hand-written rule this replaced: 6° zones from -180°, the hemisphere by the latitude's sign."""
    import math
    zone = min(60, int(math.floor((lon + 180) / 6)) + 1)
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


@pytest.mark.parametrize("lon, lat, expected", [
    (9.1688, 48.7710, "EPSG:32632"),    # the Stuttgart sample
    (151.21, -33.87, "EPSG:32756"),     # Sydney
    (-58.38, -34.60, "EPSG:32721"),     # Buenos Aires
    (18.42, -33.92, "EPSG:32734"),      # Cape Town
    (-70.65, -33.45, "EPSG:32719"),     # Santiago
    (12.0, 50.0, "EPSG:32633"),         # on a zone border: the eastern zone
    (0.0, 0.0, "EPSG:32631"),           # on the equator: the northern hemisphere
    (-180.0, 10.0, "EPSG:32601"),
    (180.0, 10.0, "EPSG:32660"),
    (5.32, 60.39, "EPSG:32631"),        # Bergen: EPSG's plain zone 31, not the military-grid exception 32V
    (15.63, 78.22, "EPSG:32633"),       # Longyearbyen (Svalbard)
    (20.0, 85.0, "EPSG:32661"),         # beyond UTM: polar stereographic (UPS north)
    (0.0, -81.0, "EPSG:32761"),         # UPS south
])
def test_utm_crs_from_the_epsg_database(lon, lat, expected):
    from geo.bbox import utm_crs_at

    assert utm_crs_at(lon, lat) == expected
    if abs(lat) <= 80:
        assert expected == _hand_zone(lon, lat)  # the same result as the hand-written rule inside UTM
    box = BBox(lon - 0.01 if lon > -180 else lon, lat - 0.01, lon + 0.01 if lon < 180 else lon, lat + 0.01)
    if box.min_lon < box.max_lon:
        assert box.utm_crs() == utm_crs_at(*box.center)
