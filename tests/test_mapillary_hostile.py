"""Hostile answers against the fake server: every run completes with counts that add up, or stops with a clear error.

Each case injects one fault class of ``tests/fake_mapillary/faults.py`` and checks three things:
the counts add up (every discovered image is an image, a failure row with a reason, or not
selected), nothing degraded is taken for data, and a rerun without the fault is complete
(a degraded answer was never kept as a result).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geo.mapillary import InvalidTokenError, MapillarySource
from geo.mapillary.counts import counts_add_up
from geo.mapillary.errors import reason_kind
from tests.fake_mapillary.fixtures import FAST, TOKEN, city, city_bbox, fake, mly_env  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


def ingest(tmp_path, city, **options):
    source = MapillarySource({**FAST, **options})
    return source.ingest(city_bbox(city), tmp_path / "images", tmp_path / "work" / "manifest.sqlite", progress=False)


def kinds(result) -> set[str]:
    return {reason_kind(r) for r in result.failures["reason"]}


def assert_accounted(result, city=None):
    """Counts add up, agree with the tables, and (given the city) cover every image of it."""
    counts = result.counts
    assert counts_add_up(counts), counts
    assert counts["downloaded"] == len(result.images)
    image_rows = result.failures[~result.failures["item_id"].str.startswith(("tile ", "search box "))]
    assert sum(counts["failed"].values()) == len(image_rows) == image_rows["item_id"].nunique()
    assert not set(image_rows["item_id"]) & set(result.images["image_id"])  # an image or a failure, never both
    if city is not None and counts["tiles_failed"] == 0:  # every image of the city is somewhere
        uncovered = {i["id"] for i in city.images} - set(result.images["image_id"]) - set(result.failures["item_id"])
        assert len(uncovered) == sum(counts["not_selected"].values()) + counts["failed"].get("no image id", 0)


def assert_complete(result, city):
    assert_accounted(result, city)
    assert result.failures.empty, result.failures.to_dict("records")
    assert sorted(result.images["image_id"]) == sorted(i["id"] for i in city.images)
    assert result.counts["discovered"] == result.counts["downloaded"] == len(city.images)


# answers that are retried until a good one comes --------------------------------------------------
@pytest.mark.parametrize("endpoint, kind, discovery", [
    ("tiles", "empty", "tiles"),  # 200 with 0 bytes is not "no coverage"
    ("tiles", "garbage", "tiles"),  # not an MVT
    ("tiles", "html", "tiles"),
    ("search", "no_data", "search"),
    ("search", "html", "search"),
    ("search", "garbage", "search"),
    ("entity", "wrong_id", "tiles"),  # an answer for another id is never data
    ("entity", "html", "tiles"),
    ("thumbs", "garbage", "tiles"),
])
def test_unusable_answers_are_retried_into_a_complete_run(tmp_path, city, mly_env, endpoint, kind, discovery):
    mly_env.inject(endpoint, kind, count=2)
    assert_complete(ingest(tmp_path, city, discovery=discovery), city)


# answers that stay unusable: failure rows, and the next run asks again ----------------------------
@pytest.mark.parametrize("endpoint, kind, discovery, reason", [
    ("tiles", "empty", "tiles", "unusable answer"),
    ("tiles", "garbage", "tiles", "tile undecodable"),
    ("tiles", "error_body", "tiles", "request failed"),  # a Graph error in a 200 is an error
    ("search", "error_body", "search", "request failed"),
    ("search", "no_data", "search", "unusable answer"),
])
def test_a_unit_that_stays_unusable_is_a_failure_and_is_asked_again(tmp_path, city, mly_env, endpoint, kind,
                                                                    discovery, reason):
    mly_env.inject(endpoint, kind, count=10_000)
    first = ingest(tmp_path, city, discovery=discovery, max_retries=1)
    assert_accounted(first)
    assert first.images.empty and first.counts["tiles_failed"] == 4 and first.counts["tiles"] == 4
    assert kinds(first) == {reason}
    mly_env.clear_faults()
    assert_complete(ingest(tmp_path, city, discovery=discovery), city)  # nothing degraded was kept


@pytest.mark.parametrize("kind, reason", [
    ("wrong_id", "answer for another id"),
    ("error_body", "request failed"),
    ("html", "unusable answer"),  # a 200 whose body is not JSON
])
def test_entities_that_stay_unusable_are_image_failures(tmp_path, city, mly_env, kind, reason):
    mly_env.inject("entity", kind, count=10_000)
    first = ingest(tmp_path, city, max_retries=1)
    assert_accounted(first, city)
    assert first.images.empty and first.counts["failed"] == {reason: len(city.images)}
    mly_env.clear_faults()
    assert_complete(ingest(tmp_path, city), city)


# results that cannot become an image: a failure row with the reason ------------------------------
@pytest.mark.parametrize("kind, reason", [
    ("no_geometry", "no geometry"),
    ("bad_coords", "coordinates out of range"),
    ("outside", "outside bbox"),
    ("no_id", "no image id"),
    ("not_object", "unusable result"),
])
def test_search_results_without_a_usable_position_are_failure_rows(tmp_path, city, mly_env, kind, reason):
    mly_env.inject("search", kind, count=1)
    first = ingest(tmp_path, city, discovery="search", concurrency=1)
    assert_accounted(first, city)
    assert reason in first.counts["failed"] and kinds(first) == {reason}
    assert first.counts["downloaded"] == len(first.images) >= len(city.images) - 1
    assert_complete(ingest(tmp_path, city, discovery="search"), city)  # the tile was not kept as complete


def test_tile_features_without_id_or_point_are_failure_rows(tmp_path, city, mly_env):
    mly_env.inject("tiles", "bad_feature", count=1)
    first = ingest(tmp_path, city, concurrency=1)
    assert_accounted(first, city)
    assert first.counts["failed"] == {"no image id": 1, "no geometry": 1}
    assert len(first.images) == len(city.images) - 1
    assert_complete(ingest(tmp_path, city), city)


# timestamps, encodings, deadlines ------------------------------------------------------------------
@pytest.mark.parametrize("discovery", ["tiles", "search"])
def test_captured_at_in_seconds_is_read_as_seconds(tmp_path, city, mly_env, discovery):
    mly_env.inject("search", "seconds", count=10_000)
    mly_env.inject("entity", "seconds", count=10_000)
    result = ingest(tmp_path, city, discovery=discovery, captured_after="2023-01-01")
    assert_complete(result, city)
    assert result.images["captured_at"].dt.year.min() >= 2023


def test_a_date_filter_says_what_it_left_out(tmp_path, city, mly_env):
    result = ingest(tmp_path, city, captured_before="2023-08-01")
    assert_accounted(result, city)
    assert result.counts["not_selected"] == {"captured at or after captured_before": len(city.images) - len(result.images)}
    assert 0 < len(result.images) < len(city.images)


def test_gzip_encoded_thumbnails_are_not_truncated(tmp_path, city, mly_env):
    mly_env.inject("thumbs", "gzip", count=10_000)
    assert_complete(ingest(tmp_path, city), city)


def test_a_trickling_thumbnail_hits_the_deadline_and_is_fetched_again(tmp_path, city, mly_env):
    mly_env.inject("thumbs", "trickle", count=1, delay_s=0.5)  # each byte within the idle timeout
    assert_complete(ingest(tmp_path, city, timeout_s=1.0, deadline_s=2.0), city)


def test_a_thumbnail_that_always_trickles_is_a_failure_not_a_hang(tmp_path, city, mly_env):
    mly_env.inject("thumbs", "trickle", count=10_000, delay_s=0.2)
    result = ingest(tmp_path, city, timeout_s=1.0, deadline_s=0.5, max_retries=0, download_attempts=1,
                    concurrency=32)
    assert_accounted(result, city)
    assert result.images.empty and "deadline" in result.failures["reason"].iloc[0]


def test_a_redirect_loop_is_a_failure_at_once_not_a_retry_storm(tmp_path, city, mly_env):
    import time

    mly_env.inject("thumbs", "redirect_loop", count=100_000)
    started = time.monotonic()
    result = ingest(tmp_path, city, backoff_base_s=5.0, backoff_max_s=5.0)  # a retry would cost seconds
    assert time.monotonic() - started < 30
    assert_accounted(result, city)
    assert result.images.empty and result.counts["failed"] == {"request failed": len(city.images)}
    assert "TooManyRedirects" in result.failures["reason"].iloc[0]


# an invalid token stops everything, whatever the status -------------------------------------------
@pytest.mark.parametrize("endpoint, discovery", [("tiles", "tiles"), ("search", "search"), ("entity", "tiles"),
                                                 ("thumbs", "tiles")])
def test_error_190_in_an_http_200_stops_the_run(tmp_path, city, mly_env, endpoint, discovery):
    mly_env.inject(endpoint, "invalid_token_200", count=10_000)
    with pytest.raises(InvalidTokenError, match="190") as info:
        ingest(tmp_path, city, discovery=discovery, concurrency=1)
    assert TOKEN not in str(info.value) and "MAPILLARY_ACCESS_TOKEN" in str(info.value)
    assert mly_env.requests[endpoint] == 1  # at once: no retry, no next image


# the fetch-only command ----------------------------------------------------------------------------
def run_fetch_only(fake, city, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAPILLARY_GRAPH_URL": fake.url, "MAPILLARY_TILES_URL": fake.url,
           "MAPILLARY_ACCESS_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "geo.mapillary", "--bbox", str(city_bbox(city)), "--store",
               str(tmp_path / "images"), "--manifest", str(tmp_path / "m.sqlite"), "--no-progress",
               *(f"-o{k}={v}" for k, v in FAST.items()), "-omax_retries=1"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=90)


def test_fetch_only_command_records_an_undecodable_tile_and_goes_on(tmp_path, city, mly_env):
    mly_env.inject("tiles", "garbage", count=2)  # max_retries=1: the first tile gets both
    done = run_fetch_only(mly_env, city, tmp_path)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["counts"]["tiles_failed"] == 1 and 0 < line["images"] < len(city.images)
    assert "Traceback" not in done.stderr


def test_fetch_only_command_stops_on_error_190_in_a_200(tmp_path, city, mly_env):
    mly_env.inject("entity", "invalid_token_200", count=10_000)
    done = run_fetch_only(mly_env, city, tmp_path)
    assert done.returncode == 3 and "190" in done.stderr and "Traceback" not in done.stderr
    assert TOKEN.split("|")[-1] not in done.stderr + done.stdout
