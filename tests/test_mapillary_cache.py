"""Prefect caching of tile discovery keys only complete answers: a degraded tile is asked again by the next run."""

from __future__ import annotations

import pytest

from geo.mapillary import MapillarySource
from geo.mapillary.counts import counts_add_up
from tests.fake_mapillary.fixtures import FAST, city, city_bbox, fake, mly_env  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def run_tiled(tmp_path, name: str, city, **options):
    from prefect import flow

    from flows.collect import collect_by_unit

    @flow(name="collect tiled (test)")
    def collect():
        return collect_by_unit(MapillarySource({**FAST, **options}), city_bbox(city), tmp_path / name / "images",
                             tmp_path / name / "work")

    return collect()


@pytest.mark.parametrize("endpoint, kind, discovery", [
    ("tiles", "empty", "tiles"),  # 200 with 0 bytes: a failure, not "no coverage"
    ("tiles", "garbage", "tiles"),  # not an MVT
    ("search", "error_body", "search"),  # 200 with an error body: not "no images"
    ("search", "no_geometry", "search"),  # a complete answer, but one result without a position
])
def test_a_degraded_tile_is_not_cached_and_a_rerun_into_a_new_folder_asks_again(tmp_path, city, mly_env,
                                                                                prefect_harness, endpoint, kind,
                                                                                discovery):
    # a bbox of its own per case, so that no other test's cached discovery answers for it
    options = {"discovery": discovery, "max_retries": 1, "concurrency": 1,
               "search_limit": 999 - len(kind)}  # part of the cache key: each case its own entries
    # tiles run in parallel: 8 bad answers spend both attempts of all 4 tiles; one bad search answer is enough
    mly_env.inject(endpoint, kind, count=8 if endpoint == "tiles" else 1)
    first = run_tiled(tmp_path, "first", city, **options)
    assert counts_add_up(first.counts), first.counts
    assert not first.failures.empty and len(first.images) < len(city.images)
    asked = mly_env.requests[endpoint]

    second = run_tiled(tmp_path, "second", city, **options)  # a new folder: only Prefect's cache is shared
    assert counts_add_up(second.counts) and second.failures.empty, second.failures.to_dict("records")
    assert sorted(second.images["image_id"]) == sorted(i["id"] for i in city.images)
    assert second.counts["discovered"] == second.counts["downloaded"] == len(city.images)
    assert mly_env.requests[endpoint] > asked  # the degraded tile was asked again

    tiles_before = mly_env.requests["tiles"] + mly_env.requests["search"]
    third = run_tiled(tmp_path, "third", city, **options)  # complete answers are cached: nothing asked again
    assert mly_env.requests["tiles"] + mly_env.requests["search"] == tiles_before
    assert len(third.images) == len(city.images) and third.failures.empty
