"""The credit lines every published artefact carries (map.png, map.html, report.md, GeoPackage).

The flow builds the list once (``run_attribution``: each source's line, then the schema's) and
passes it to publishing (``publish_run(attribution=...)``) and to ``run.json``; without it,
``default_attribution`` derives one from the database: one line per image source found in
``images.source`` and the OpenStreetMap line for the roads.
"""

from __future__ import annotations

from typing import Sequence

import duckdb

from contracts.notices import MAPILLARY_ATTRIBUTION, OSM_ATTRIBUTION, SCHEMA_ATTRIBUTION


def run_attribution(*sources: str) -> list[str]:
    """The credit lines of a run: each source's (imagery, roads), then the attribute schema's."""
    return [*sources, SCHEMA_ATTRIBUTION]


def source_attribution(source: str) -> str:
    """The credit line of an image source named in ``images.source``."""
    if source in ("mapillary", "sample"):  # the bundled sample is Mapillary imagery too
        return MAPILLARY_ATTRIBUTION
    return f"images from {source}; check their licence before publishing"


def default_attribution(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Credit lines for a built audit database: its image sources, OpenStreetMap, the label schema."""
    sources = [row[0] for row in con.execute(
        "SELECT DISTINCT coalesce(source, 'an unnamed source') FROM images ORDER BY 1").fetchall()]
    return [source_attribution(s) for s in sources] + [OSM_ATTRIBUTION, SCHEMA_ATTRIBUTION]


def credit_text(attribution: Sequence[str], separator: str = "; ") -> str:
    """The lines as one credit string (map picture footers, metadata fields)."""
    return separator.join(line.strip() for line in attribution if line and line.strip())
