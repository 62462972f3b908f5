"""The credit lines every published artefact carries (map.png, map.html, report.md, GeoPackage).

The flow passes the same list it writes to ``run.json`` (``publish_run(attribution=...)``); when it
does not, ``default_attribution`` derives one from the database: one line per image source found
in ``images.source`` and the OpenStreetMap line for the roads.
"""

from __future__ import annotations

from typing import Sequence

import duckdb

OSM_ATTRIBUTION = "roads © OpenStreetMap contributors, ODbL 1.0"
SCHEMA_ATTRIBUTION = "attribute schema: Global StreetScapes (Hou et al. 2024, ISPRS J. 215:216-238)"


def source_attribution(source: str) -> str:
    """The credit line of an image source named in ``images.source``."""
    if source == "mapillary":
        from geo.mapillary.options import ATTRIBUTION  # the Mapillary source's own wording

        return ATTRIBUTION
    return f"images from {source}; check their licence before publishing"


def default_attribution(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Credit lines for a built audit database: its image sources, OpenStreetMap, the label schema."""
    sources = [row[0] for row in con.execute(
        "SELECT DISTINCT coalesce(source, 'an unnamed source') FROM images ORDER BY 1").fetchall()]
    return [source_attribution(s) for s in sources] + [OSM_ATTRIBUTION, SCHEMA_ATTRIBUTION]


def credit_text(attribution: Sequence[str], separator: str = "; ") -> str:
    """The lines as one credit string (map picture footers, metadata fields)."""
    return separator.join(line.strip() for line in attribution if line and line.strip())
