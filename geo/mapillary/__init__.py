"""Mapillary API v4 ingestion: z14 tile discovery or Graph search, selection, verified resumable downloads.

Modules, each named for what it does: ``options`` (what to fetch, endpoints, token),
``client`` (async HTTP with per-endpoint rate limits and retries), ``tiles`` (z14 coverage
vector tiles), ``search`` (Graph bbox search), ``records`` (answers to image records),
``select`` (filters and thinning), ``download`` (verified atomic thumbnails), ``manifest``
(resume state) and ``source`` (the ``mapillary`` imagery source tying them together).
The token comes from ``MAPILLARY_ACCESS_TOKEN`` or a Prefect Secret block; see docs/mapillary.md.

The names below are imported on first use, so that checking options (``geo.mapillary.options``)
does not load the HTTP, vector-tile and table libraries.
"""

from importlib import import_module

_EXPORTS = {
    "CorruptImageError": "errors", "ExpiredURLError": "errors", "InvalidTokenError": "errors",
    "MapillaryAPIError": "errors", "MapillaryError": "errors", "MissingTokenError": "errors",
    "OptionsError": "errors", "ATTRIBUTION": "options", "MapillaryOptions": "options",
    "resolve_token": "options", "MANIFEST_NAME": "source", "MapillarySource": "source",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'geo.mapillary' has no attribute {name!r}")
    return getattr(import_module(f"geo.mapillary.{_EXPORTS[name]}"), name)
