"""Units without a server: timestamps by magnitude, positions and their problems, tile decoding, selection counts."""

from __future__ import annotations

from datetime import datetime, timezone

import mapbox_vector_tile
import mercantile
import pandas as pd
import pytest

from geo.bbox import BBox
from geo.mapillary.options import MapillaryOptions
from geo.mapillary.records import captured_at_utc, epoch_seconds, graph_record, position_problem
from geo.mapillary.select import records_frame, select_counted
from geo.mapillary.tiles import TileDecodeError, decode_tile, tile_features

pytestmark = pytest.mark.timeout(60)
MOMENT = datetime(2023, 6, 29, 1, 6, 40, tzinfo=timezone.utc)  # 1_688_000_800 s


@pytest.mark.parametrize("value", [1_688_000_800, 1_688_000_800.0, "1688000800", 1_688_000_800_000,
                                   "1688000800000", 1_688_000_800_000_000, 1_688_000_800_000_000_000,
                                   "2023-06-29T01:06:40Z", "2023-06-29T01:06:40", "2023-06-29T03:06:40+02:00"])
def test_captured_at_in_any_unit_is_the_same_moment(value):
    assert captured_at_utc(value) == MOMENT


def test_the_magnitude_rule_and_its_limits():
    assert epoch_seconds(99_999_999_999) == 99_999_999_999  # just below 1e11: seconds (year 5138)
    assert epoch_seconds(100_000_000_000) == 100_000_000  # 1e11: milliseconds (March 1973)
    assert captured_at_utc(0) == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert captured_at_utc(-86_400) == datetime(1969, 12, 31, tzinfo=timezone.utc)
    assert captured_at_utc(float("nan")) is None and captured_at_utc("soon") is None and captured_at_utc(True) is None


@pytest.mark.parametrize("entity, problem", [
    ({"id": "1", "geometry": {"type": "Point", "coordinates": [9.1, 48.7]}}, None),
    ({"id": "1", "computed_geometry": {"coordinates": [9.1, 48.7]}, "geometry": None}, None),
    ({"id": "1"}, "no geometry"),
    ({"id": "1", "geometry": {"type": "Point"}}, "no geometry"),
    ({"id": "1", "geometry": {"coordinates": [None, None]}}, "no geometry"),
    ({"id": "1", "geometry": "POINT(9 48)"}, "no geometry"),
    ({"id": "1", "geometry": {"coordinates": [200, 10]}}, "coordinates out of range"),
    ({"id": "1", "geometry": {"coordinates": [9, -95]}}, "coordinates out of range"),
    ({"id": "1", "geometry": {"coordinates": ["nan", 1]}}, "coordinates out of range"),
    ({"id": "1", "geometry": {"coordinates": [float("inf"), 1]}}, "coordinates out of range"),
])
def test_position_problems_are_named(entity, problem):
    assert position_problem(entity) == problem
    assert (graph_record(entity)["lon"] is None) == (problem is not None)


def _tile(features, tile=mercantile.Tile(8800, 5372, 14)):
    bounds = mercantile.xy_bounds(tile)
    return mapbox_vector_tile.encode([{"name": "image", "features": features}],
                                     default_options={"quantize_bounds": bounds, "extents": 4096}), tile


@pytest.mark.parametrize("data", [b"\x00\xff garbage", b"<html>502</html>", b'{"error": {"code": 100}}', b"\x1a\x05abc"])
def test_bytes_that_are_not_a_vector_tile_raise(data):
    with pytest.raises(TileDecodeError, match="vector tile"):
        tile_features(data, "14/8800/5372")


def test_tile_features_without_id_or_point_become_failures_and_the_bbox_filters_records():
    tile = mercantile.Tile(8800, 5372, 14)
    west, south, east, north = mercantile.bounds(tile)
    inside = mercantile.xy(west + (east - west) * 0.25, south + (north - south) * 0.25)
    far = mercantile.xy(west + (east - west) * 0.9, south + (north - south) * 0.9)
    data, _ = _tile([
        {"geometry": "POINT({} {})".format(*inside), "properties": {"id": 11, "captured_at": 1_688_000_800}},
        {"geometry": "POINT({} {})".format(*far), "properties": {"id": 12}},
        {"geometry": "POINT({} {})".format(*inside), "properties": {"sequence_id": "s"}},
        {"geometry": "LINESTRING({} {}, {} {})".format(*inside, *far), "properties": {"id": 13}},
    ], tile)
    bbox = BBox(west, south, west + (east - west) / 2, south + (north - south) / 2)
    records, failures = decode_tile(data, "14/8800/5372", bbox=bbox)
    assert [r["image_id"] for r in records] == ["11"] and records[0]["captured_at"] == MOMENT
    assert failures == {"feature 2 of tile 14/8800/5372": "no image id: a vector-tile feature without an id",
                        "13": "no geometry: vector-tile feature 13 of tile 14/8800/5372"}


def test_selection_counts_every_image_it_leaves_out():
    rows = [{"image_id": str(i), "sequence_id": "s", "lon": 9.0 + i * 1e-6, "lat": 48.0, "is_pano": i % 2 == 0,
             "captured_at": None if i == 0 else MOMENT.replace(year=2020 + i % 5)} for i in range(20)]
    rows.append({"image_id": "far", "lon": 10.0, "lat": 48.0, "captured_at": MOMENT})
    frame = records_frame(rows + rows[:3])  # duplicates count once
    options = MapillaryOptions(captured_after="2021-01-01", panoramas="no", min_spacing_m=0.2, max_images=2)
    chosen, dropped = select_counted(frame, options, BBox(8.9, 47.9, 9.1, 48.1))
    assert len(chosen) == 2 and chosen["image_id"].is_unique
    assert dropped["outside bbox"] == 1 and dropped["unknown capture time"] == 1
    assert dropped["captured before captured_after"] == 4 - 1  # 2020 rows: i = 5, 10, 15 (0 has no time)
    assert len(chosen) + sum(dropped.values()) == frame["image_id"].nunique()
    assert set(dropped) <= {"outside bbox", "unknown capture time", "captured before captured_after",
                            "panorama (panoramas=no)", "thinned (min_spacing_m)", "beyond max_images"}
    assert pd.Series(list(dropped.values())).gt(0).all()
