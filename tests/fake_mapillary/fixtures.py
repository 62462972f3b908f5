"""Pytest fixtures for the Mapillary tests: a fake server seeded with a synthetic city, the environment pointing at it.

Import them into a test module (``from tests.fake_mapillary.fixtures import city, fake, mly_env``).
"""

from __future__ import annotations

import pytest

from geo.bbox import BBox
from tests.fake_mapillary import FakeMapillary, recorded_images, synthetic_city

TOKEN = "MLY|4242|fake-secret-token-do-not-leak"
#: Options that make tests quick: generous limits, tiny backoff. Never timing-dependent.
FAST = dict(search_rpm=600_000, entity_rpm=600_000, tiles_rpm=600_000, thumbs_rpm=600_000, backoff_base_s=0.01,
            backoff_max_s=0.05, timeout_s=5.0, concurrency=8)


@pytest.fixture(scope="module")
def city():
    """3 + 3 streets around a z14 tile corner, an image every 40 m: 90 images in 4 tiles."""
    return synthetic_city(n_streets=3, half_size_m=300.0, spacing_m=40.0)


@pytest.fixture()
def fake(city):
    """A fresh fake server (no faults, counters at zero) with the city and the recorded images."""
    with FakeMapillary(city.images + recorded_images(), token=TOKEN) as server:
        yield server


@pytest.fixture()
def mly_env(fake, monkeypatch):
    """Environment pointing the client at ``fake`` with the right token; returns the server."""
    monkeypatch.setenv("MAPILLARY_GRAPH_URL", fake.url)
    monkeypatch.setenv("MAPILLARY_TILES_URL", fake.url)
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", TOKEN)
    return fake


def city_bbox(city) -> BBox:
    return BBox(*city.bbox)
