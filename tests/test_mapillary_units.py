"""Unit tests of the Mapillary pieces that need no server: options, redaction, limiter, records, tiles, selection."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import mapbox_vector_tile
import mercantile
import pandas as pd
import pytest

from geo.bbox import BBox
from geo.mapillary.client import RateLimiter, retry_after_s
from geo.mapillary.errors import MissingTokenError, OptionsError, RedactingFilter, redact, remember_token
from geo.mapillary.options import AccessToken, MapillaryOptions, parse_options, resolve_token
from geo.mapillary.records import graph_record, tile_record
from geo.mapillary.search import quarter, search_params, split_box
from geo.mapillary.select import distance_m, select_images, thin_sequences
from geo.mapillary.tiles import covering_tiles, decode_image_layer, tile_box, tile_points

DATA = Path(__file__).parent / "data" / "mapillary"


# options and token --------------------------------------------------------------------------------
def test_options_convert_command_line_strings():
    options = MapillaryOptions.from_mapping(parse_options(
        ["min_spacing_m=7.5", "max_images=20", "thumb_size=2048", "panoramas=no", "captured_after=2023-01-01"]))
    assert (options.min_spacing_m, options.max_images, options.thumb_size, options.panoramas) == (7.5, 20, 2048, "no")
    assert options.thumb_field == "thumb_2048_url"


@pytest.mark.parametrize("values, needle", [
    ({"panoramas": "maybe"}, "panoramas"),
    ({"thumb_size": 300}, "thumb_size"),
    ({"search_tile_deg": 0.01}, "0.01"),
    ({"access_token": "MLY|x"}, "unknown Mapillary option"),
    ({"captured_after": "last week"}, "ISO date"),
    ({"search_rpm": 0}, "search_rpm"),
])
def test_bad_options_say_what_is_wrong(values, needle):
    with pytest.raises(OptionsError, match=needle) as info:
        MapillaryOptions.from_mapping(values)
    assert "MLY|x" not in str(info.value)


def test_option_without_equals_is_refused():
    with pytest.raises(OptionsError, match="KEY=VALUE"):
        parse_options(["min_spacing_m"])


def test_missing_token_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)
    with pytest.raises(MissingTokenError, match="MAPILLARY_ACCESS_TOKEN") as info:
        resolve_token()
    assert "dashboard/developers" in str(info.value)


def test_token_never_shows_in_repr_or_pickle(monkeypatch):
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", "MLY|1|unit-secret")
    token = resolve_token()
    assert token.reveal() == "MLY|1|unit-secret"
    assert "unit-secret" not in repr(token) + str(token) + f"{token}"
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(token)


def test_redact_scrubs_query_header_and_known_tokens():
    remember_token("MLY|9|remembered")
    text = "GET https://tiles/x?access_token=MLY|9|abc&b=1 Authorization: OAuth MLY|9|def; saw MLY|9|remembered"
    cleaned = redact(text)
    assert "MLY|9" not in cleaned and cleaned.count("***") == 3
    assert redact("url-encoded: MLY%7C9%7Cremembered") == "url-encoded: ***"


def test_log_filter_redacts_records():
    AccessToken("MLY|7|in-a-log-line")
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: GET %s", ("http://h/?x=MLY|7|in-a-log-line",), None)
    RedactingFilter().filter(record)
    assert "in-a-log-line" not in record.getMessage()


# limiter and Retry-After ---------------------------------------------------------------------------
def test_rate_limiter_spaces_reservations_by_the_interval():
    limiter = RateLimiter(per_minute=60)  # one per second
    waits = [limiter.reserve() for _ in range(4)]
    assert waits[0] == 0
    for i, wait in enumerate(waits[1:], start=1):
        assert wait == pytest.approx(i, abs=0.05)  # reservations, not elapsed time


def test_rate_limiter_pause_holds_back_the_next_slot():
    limiter = RateLimiter(per_minute=6000)
    limiter.pause(30)
    assert limiter.reserve() == pytest.approx(30, abs=0.5)


def test_retry_after_seconds_and_http_date():
    assert retry_after_s("7") == 7
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    future = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + 120, tz=timezone.utc)
    assert 100 < retry_after_s(future.strftime("%a, %d %b %Y %H:%M:%S GMT")) <= 120


# records -------------------------------------------------------------------------------------------
def test_recorded_entities_become_records():
    for path in sorted((DATA / "graph").glob("*.json")):
        entity = json.loads(path.read_text())
        record = graph_record(entity)
        assert record["image_id"] == entity["id"]
        assert record["sequence_id"] == "7nfcwfvjdtphz7yj6zat6a"
        assert record["lon"] == pytest.approx(entity["computed_geometry"]["coordinates"][0])
        assert record["captured_at"].year == 2019
        assert record["is_pano"] is False  # camera_type perspective


def test_missing_and_malformed_fields_become_none():
    record = graph_record({"id": 12, "geometry": {"coordinates": [200, 0]}, "captured_at": "x", "compass_angle": None,
                           "camera_type": "spherical", "width": "wide"})
    assert record["image_id"] == "12" and record["lon"] is None and record["captured_at"] is None
    assert record["is_pano"] is True and record["width"] is None
    fallback = graph_record({"id": "1", "geometry": {"type": "Point", "coordinates": [9.1, 48.7]}})
    assert (fallback["lon"], fallback["lat"]) == (9.1, 48.7)


def test_tile_properties_with_empty_strings():
    record = tile_record({"id": "", "sequence_id": "abc", "captured_at": "", "is_pano": ""}, 1.0, 2.0)
    assert record["image_id"] is None and record["sequence_id"] == "abc" and record["captured_at"] is None


# tiles ---------------------------------------------------------------------------------------------
def test_synthetic_tile_round_trip():
    tile = mercantile.tile(13.40, 52.52, 14)
    west, south, east, north = mercantile.bounds(tile)
    points = [(west + (east - west) * f, south + (north - south) * g, str(10**12 + i))
              for i, (f, g) in enumerate([(0.1, 0.2), (0.5, 0.5), (0.9, 0.7)])]
    features = [{"geometry": "POINT({} {})".format(*mercantile.xy(lon, lat)),
                 "properties": {"id": int(i), "sequence_id": "s1", "captured_at": 1700000000000, "is_pano": False}}
                for lon, lat, i in points]
    data = mapbox_vector_tile.encode([{"name": "image", "features": features}],
                                     default_options={"quantize_bounds": mercantile.xy_bounds(tile), "extents": 4096})
    records = decode_image_layer(data, f"14/{tile.x}/{tile.y}")
    assert [r["image_id"] for r in records] == [p[2] for p in points]
    for record, (lon, lat, _) in zip(records, points):
        assert distance_m(record["lon"], record["lat"], lon, lat) < 2.0  # 4096 steps over ~1.5 km
        assert record["captured_at"].year == 2023


def test_recorded_tile_decodes_inside_its_bounds_and_skips_features_without_ids():
    data = (DATA / "tiles" / "14_3252_6258.mvt").read_bytes()
    west, south, east, north = mercantile.bounds(mercantile.Tile(3252, 6258, 14))
    points = list(tile_points(data, "14/3252/6258"))
    assert len(points) == 4888
    assert all(west - 1e-6 <= lon <= east + 1e-6 and south - 1e-6 <= lat <= north + 1e-6 for lon, lat, _ in points)
    assert all(p["sequence_id"] for _, _, p in points)
    assert decode_image_layer(data, "14/3252/6258") == []  # the recorded copy has empty image ids
    assert decode_image_layer(b"", "14/3252/6258") == []


def test_covering_tiles_and_clipped_tile_box():
    bbox = BBox(13.37, 52.515, 13.39, 52.53)
    tiles = covering_tiles(bbox)
    assert len(tiles) == len(set(tiles)) >= 2
    clipped = tile_box(tiles[0], bbox)
    assert bbox.min_lon <= clipped.min_lon < clipped.max_lon <= bbox.max_lon


# search boxes --------------------------------------------------------------------------------------
def test_split_box_stays_under_the_api_limit_and_covers_the_area():
    area = BBox(4.24, 50.76, 4.2645, 50.7712)
    boxes = split_box(area, 0.005)
    assert all(b.max_lon - b.min_lon <= 0.005 + 1e-12 and b.max_lat - b.min_lat <= 0.005 + 1e-12 for b in boxes)
    assert sum((b.max_lon - b.min_lon) * (b.max_lat - b.min_lat) for b in boxes) == pytest.approx(
        (area.max_lon - area.min_lon) * (area.max_lat - area.min_lat))
    assert len(quarter(boxes[0])) == 4


def test_search_params_carry_fields_and_server_side_filters():
    options = MapillaryOptions(captured_after="2023-01-01", organization_id="77", panoramas="only", search_limit=500)
    params = search_params(BBox(1, 2, 1.004, 2.004), options)
    assert params["limit"] == "500" and "computed_geometry" in params["fields"].split(",")
    assert params["start_captured_at"] == "2023-01-01T00:00:00Z" and params["organization_id"] == "77"
    assert params["is_pano"] == "true" and "access_token" not in params


# selection -----------------------------------------------------------------------------------------
def _frame(n_per_sequence=10, step_m=3.0):
    rows = []
    for s, (seq, pano, org, year) in enumerate([("a", False, "1", 2020), ("b", True, "2", 2024)]):
        for i in range(n_per_sequence):
            rows.append({"image_id": f"{seq}{i:02d}", "sequence_id": seq, "is_pano": pano, "organization_id": org,
                         "captured_at": datetime(year, 5, 1, 12, 0, i, tzinfo=timezone.utc),
                         "lon": 13.4 + i * step_m / (111_320 * math.cos(math.radians(52.5))), "lat": 52.5 + s * 0.001})
    return pd.DataFrame(rows)


def test_filters_by_date_pano_and_organisation():
    frame = _frame()
    assert set(select_images(frame, MapillaryOptions(captured_after="2023-01-01"))["sequence_id"]) == {"b"}
    assert set(select_images(frame, MapillaryOptions(captured_before="2023-01-01"))["sequence_id"]) == {"a"}
    assert set(select_images(frame, MapillaryOptions(panoramas="no"))["sequence_id"]) == {"a"}
    assert set(select_images(frame, MapillaryOptions(panoramas="only"))["sequence_id"]) == {"b"}
    assert set(select_images(frame, MapillaryOptions(organization_id="2"))["sequence_id"]) == {"b"}
    assert len(select_images(frame, MapillaryOptions())) == 20


def test_thinning_keeps_one_image_per_spacing_along_each_sequence():
    thinned = thin_sequences(_frame(n_per_sequence=10, step_m=3.0), min_spacing_m=10.0)
    for _, group in thinned.groupby("sequence_id"):
        assert list(group["image_id"].str[1:].astype(int)) == [0, 4, 8]  # 0 m, 12 m, 24 m


def test_max_images_keeps_the_most_recent_and_ids_are_unique():
    frame = pd.concat([_frame(), _frame().head(3)], ignore_index=True)
    chosen = select_images(frame, MapillaryOptions(max_images=5))
    assert len(chosen) == 5 and chosen["image_id"].is_unique and set(chosen["sequence_id"]) == {"b"}


def test_manifest_round_trip_keeps_records_with_mixed_timestamp_precision(tmp_path):
    from geo.mapillary.manifest import Manifest
    from geo.mapillary.select import records_frame

    records = [graph_record({"id": str(i), "captured_at": 1563721048000 + i * 500, "sequence": "s",
                             "geometry": {"type": "Point", "coordinates": [9.0, 48.0]}}) for i in range(4)]
    manifest = Manifest(tmp_path / "m.sqlite")
    assert manifest.tile_records("14/1/1", "k") is None
    manifest.record_tile("14/1/1", "k", records)
    frame = records_frame(manifest.tile_records("14/1/1", "k"))
    assert list(frame["captured_at"]) == [r["captured_at"] for r in records]
    assert manifest.counts() == {"tiles": 1, "discovered": 4, "fetched": 0, "failed": 0}


def test_manifest_opened_by_many_tile_tasks_at_once(tmp_path):
    """Mapped tile tasks open the same new manifest in parallel threads; none may fail with 'locked'."""
    import threading

    from geo.mapillary.manifest import Manifest

    errors: list[BaseException] = []

    def open_and_record(i: int, path: Path) -> None:
        try:
            Manifest(path).record_tile(f"14/{i}/0", "q", [{"image_id": str(i)}])
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    for round_ in range(20):  # each round a fresh file: the race is in creating it and switching to WAL
        path = tmp_path / f"manifest-{round_}.sqlite"
        threads = [threading.Thread(target=open_and_record, args=(i, path)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert Manifest(path).counts()["tiles"] == 8
    assert errors == []
