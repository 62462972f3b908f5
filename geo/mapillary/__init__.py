"""Mapillary API v4 ingestion: z14 tile discovery or Graph search, selection, verified resumable downloads.

Modules, each named for what it does: ``options`` (what to fetch, endpoints, token),
``client`` (async HTTP with per-endpoint rate limits and retries), ``tiles`` (z14 coverage
vector tiles), ``search`` (Graph bbox search), ``records`` (answers to image records),
``select`` (filters and thinning), ``download`` (verified atomic thumbnails), ``manifest``
(resume state) and ``source`` (the ``mapillary`` imagery source tying them together).
The token comes from ``MAPILLARY_ACCESS_TOKEN`` or a Prefect Secret block; see docs/mapillary.md.
"""

from geo.mapillary.errors import (CorruptImageError, ExpiredURLError, InvalidTokenError, MapillaryAPIError,
                                  MapillaryError, MissingTokenError, OptionsError)
from geo.mapillary.options import ATTRIBUTION, MapillaryOptions, resolve_token
from geo.mapillary.source import MANIFEST_NAME, MapillarySource

__all__ = ["ATTRIBUTION", "MANIFEST_NAME", "CorruptImageError", "ExpiredURLError", "InvalidTokenError",
           "MapillaryAPIError", "MapillaryError", "MapillaryOptions", "MapillarySource", "MissingTokenError",
           "OptionsError", "resolve_token"]
