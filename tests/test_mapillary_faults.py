"""Ingestion against the fake Mapillary server: every fault ends in a completed run or a clear error."""

from __future__ import annotations

import hashlib

import pytest

from geo.bbox import BBox
from geo.mapillary import InvalidTokenError, MapillaryAPIError, MapillarySource, MissingTokenError
from geo.mapillary.client import MapillaryClient
from geo.mapillary.options import MapillaryOptions, resolve_token
from geo.mapillary.source import run_sync
from tests.fake_mapillary import jpeg_for
from tests.fake_mapillary.fixtures import FAST, TOKEN, city, city_bbox, fake, mly_env  # noqa: F401 - fixtures

JOSM_BBOX = BBox(-108.5725, 39.0640, -108.5690, 39.0700)  # the 8 recorded Grand Junction entities


def ingest(tmp_path, city, **options):
    source = MapillarySource({**FAST, **options})
    return source.ingest(city_bbox(city), tmp_path / "images", tmp_path / "work" / "manifest.sqlite", progress=False)


def assert_complete(result, city, tmp_path):
    assert result.failures.empty, result.failures.to_dict("records")
    assert sorted(result.images["image_id"]) == sorted(i["id"] for i in city.images)
    for row in result.images.itertuples():
        data = (tmp_path / "images" / row.path).read_bytes()
        assert data == jpeg_for(row.image_id, "1024")
        assert hashlib.sha256(data).hexdigest() == row.sha256
    assert not list((tmp_path / "images").glob(".*.partial"))


@pytest.mark.parametrize("discovery", ["tiles", "search"])
def test_clean_run_fetches_every_image_once(tmp_path, city, mly_env, discovery):
    result = ingest(tmp_path, city, discovery=discovery)
    assert_complete(result, city, tmp_path)
    assert set(mly_env.thumbs_served.values()) == {1}
    assert result.images["lon"].notna().all() and result.images["captured_at"].notna().all()
    assert (tmp_path / "images" / "ATTRIBUTION.txt").read_text().startswith("images CC BY-SA 4.0")
    again = ingest(tmp_path, city, discovery=discovery)  # resume: nothing left to do, nothing asked again
    assert_complete(again, city, tmp_path)
    assert set(mly_env.thumbs_served.values()) == {1}


def test_search_splits_boxes_that_return_the_limit(tmp_path, city, mly_env):
    result = ingest(tmp_path, city, discovery="search", search_limit=20)
    assert_complete(result, city, tmp_path)
    assert mly_env.requests["search"] > 4 * 2  # 4 tiles x 2 boxes at least, then splits


def test_recorded_entities_are_found_by_search_and_downloaded(tmp_path, mly_env):
    source = MapillarySource({**FAST, "discovery": "search"})
    result = source.ingest(JOSM_BBOX, tmp_path / "images", tmp_path / "m.sqlite", progress=False)
    assert len(result.images) == 8 and result.failures.empty
    assert set(result.images["sequence_id"]) == {"7nfcwfvjdtphz7yj6zat6a"}


@pytest.mark.parametrize("endpoint, kind, params", [
    ("tiles", "429", {"retry_after_s": 0.2}),
    ("entity", "429", {"retry_after_s": None}),
    ("search", "429", {"retry_after_s": 0.1}),
    ("tiles", "500", {}),
    ("entity", "500", {}),
    ("thumbs", "500", {}),
    ("search", "query_timeout", {}),  # HTTP 400, code -2, is_transient false: retried anyway
    ("entity", "drop", {}),
    ("thumbs", "cut", {}),  # connection closes mid-body
    ("thumbs", "truncate", {}),  # a short JPEG with a matching Content-Length
    ("thumbs", "expire", {}),  # 403 on the signed URL: a fresh one is fetched
    ("entity", "timeout", {"delay_s": 1.5}),
    ("tiles", "slow", {"delay_s": 0.3}),
])
def test_transient_faults_end_in_a_complete_run(tmp_path, city, mly_env, endpoint, kind, params):
    discovery = "search" if endpoint == "search" else "tiles"
    mly_env.inject(endpoint, kind, count=2, **params)
    result = ingest(tmp_path, city, discovery=discovery, timeout_s=0.5)
    assert_complete(result, city, tmp_path)
    retried = 0 if kind == "slow" else 2  # slow answers within the timeout are not retried
    assert mly_env.requests[endpoint] >= (4 if endpoint in ("tiles", "search") else len(city.images)) + retried


def test_expired_urls_are_refetched_from_the_entity_endpoint(tmp_path, city, mly_env):
    mly_env.inject("thumbs", "expire", count=2)
    result = ingest(tmp_path, city, concurrency=1, download_attempts=3)
    assert_complete(result, city, tmp_path)
    assert mly_env.requests["entity"] == len(city.images) + 2  # one fresh URL per refused one


def test_persistently_truncated_images_become_failures_with_a_reason(tmp_path, city, mly_env):
    mly_env.inject("thumbs", "truncate", count=3)  # with concurrency 1, the first image gets all three
    result = ingest(tmp_path, city, concurrency=1, download_attempts=3)
    assert len(result.failures) == 1 and len(result.images) == len(city.images) - 1
    failure = result.failures.iloc[0]
    assert failure["stage"] == "mapillary download" and "truncated" in failure["reason"]
    assert failure["item_id"] not in set(result.images["image_id"])
    assert not (tmp_path / "images" / f"{failure['item_id']}.jpg").exists()
    retried = ingest(tmp_path, city)  # the failure is tried again on the next run
    assert_complete(retried, city, tmp_path)


def test_a_tile_that_keeps_failing_is_a_failure_row_not_a_silent_gap(tmp_path, city, mly_env):
    mly_env.inject("tiles", "500", count=3)  # max_retries=2: the first tile gets 3 x 500
    result = ingest(tmp_path, city, max_retries=2, concurrency=1)
    tile_failures = result.failures[result.failures["item_id"].str.startswith("tile ")]
    assert len(tile_failures) == 1 and "HTTP 500" in tile_failures.iloc[0]["reason"]
    assert 0 < len(result.images) < len(city.images)
    assert_complete(ingest(tmp_path, city), city, tmp_path)  # a rerun asks for that tile again


def test_retry_after_longer_than_allowed_is_a_clear_error(tmp_path, city, mly_env):
    mly_env.inject("tiles", "429", count=100, retry_after_s=3600)
    result = ingest(tmp_path, city, max_retry_after_s=60)
    assert len(result.failures) == 4 and result.images.empty
    assert result.failures["reason"].str.contains("Retry-After").all()
    assert result.failures["reason"].str.contains("tiles_rpm").all()


def test_invalid_token_fails_fast_with_a_clear_message(tmp_path, city, mly_env, monkeypatch):
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", "MLY|1|wrong-token")
    with pytest.raises(InvalidTokenError, match="190") as info:
        ingest(tmp_path, city)
    message = str(info.value)
    assert "MAPILLARY_ACCESS_TOKEN" in message and "wrong-token" not in message and TOKEN not in message
    assert mly_env.requests["tiles"] == 1  # no retries: retrying cannot fix a token


def test_invalid_token_midway_stops_downloads(tmp_path, city, mly_env):
    mly_env.inject("entity", "invalid_token", count=1)
    with pytest.raises(InvalidTokenError):
        ingest(tmp_path, city, concurrency=1)


def test_missing_token_is_refused_before_any_request(tmp_path, city, mly_env, monkeypatch):
    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN")
    with pytest.raises(MissingTokenError, match="MAPILLARY_ACCESS_TOKEN"):
        ingest(tmp_path, city)
    assert sum(mly_env.requests.values()) == 0


def test_429_pauses_the_endpoint_limiter(mly_env):
    mly_env.inject("entity", "429", count=1, retry_after_s=0.2)
    options = MapillaryOptions(**FAST)

    async def one():
        async with MapillaryClient(resolve_token(), options) as client:
            body = await client.graph("148137757289079", {"fields": "id"})
            return body, client

    body, client = run_sync(one())
    assert body == {"id": "148137757289079"}
    assert client.requests["entity"] == 2 and client.retries["entity"] == 1


def test_unknown_image_is_a_clear_api_error(mly_env):
    async def one():
        async with MapillaryClient(resolve_token(), MapillaryOptions(**FAST)) as client:
            await client.graph("404404404", {"fields": "id"})

    with pytest.raises(MapillaryAPIError, match="HTTP 404") as info:
        run_sync(one())
    assert TOKEN not in str(info.value)


def test_generic_collect_images_works_with_the_mapillary_source(tmp_path, city, mly_env):
    from geo.imagery import collect_images, make_source

    source = make_source("mapillary", options={**FAST, "panoramas": "no"})
    result = collect_images(source, city_bbox(city), tmp_path / "images", progress=False)
    expected = {i["id"] for i in city.images if not i["is_pano"]}
    assert set(result.images["image_id"]) == expected and result.failures.empty
    assert set(result.images["source"]) == {"mapillary"}
    for row in result.images.itertuples():
        assert (tmp_path / "images" / row.path).read_bytes() == jpeg_for(row.image_id, "1024")


def test_urls_that_are_always_expired_end_as_failures_with_the_reason(tmp_path, city, monkeypatch):
    from tests.fake_mapillary import FakeMapillary

    with FakeMapillary(city.images[:5], token=TOKEN, url_ttl_s=-60) as server:  # every URL is born expired
        monkeypatch.setenv("MAPILLARY_GRAPH_URL", server.url)
        monkeypatch.setenv("MAPILLARY_TILES_URL", server.url)
        monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", TOKEN)
        result = ingest(tmp_path, city, download_attempts=2)
        assert server.requests["entity"] == 5 * 2  # a fresh URL for every attempt
    assert result.images.empty and len(result.failures) == 5
    assert result.failures["reason"].str.contains("expired").all()
