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
