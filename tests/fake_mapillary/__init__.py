"""A local fake of the Mapillary API v4 for tests and benchmarks (see ``server.py``)."""

from tests.fake_mapillary.city import City, recorded_images, synthetic_city
from tests.fake_mapillary.server import FakeMapillary, jpeg_for

__all__ = ["City", "FakeMapillary", "jpeg_for", "recorded_images", "synthetic_city"]
