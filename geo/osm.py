"""Road segments from a local OpenStreetMap PBF extract (e.g. one downloaded from Geofabrik).

The PBF is read with DuckDB spatial's ``ST_ReadOSM`` (no network, no extra library); the SQL is
``geo/sql/osm_road_segments.sql``. Ways whose ``highway`` tag is one of ``road_classes`` are kept,
split at junctions (nodes shared by two kept ways, or visited twice by one) and then into equal
parts of at most ``max_segment_length_m``. Segment ids are ``osm:<way_id>:<k>``, numbered along
the way over the whole file, so they do not change with the bbox. ``length_m`` is geodesic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import pandas as pd

from contracts.errors import CityAuditError
from geo.bbox import BBox
from contracts.spatial import connect

SQL_DIR = Path(__file__).parent / "sql"

#: The highway classes a planner audits by default: the drivable network plus living streets and
#: pedestrian streets. Footways, cycleways, paths and tracks are left out (pass them to keep them).
DEFAULT_ROAD_CLASSES: tuple[str, ...] = (
    "motorway", "motorway_link", "trunk", "trunk_link", "primary", "primary_link", "secondary", "secondary_link",
    "tertiary", "tertiary_link", "unclassified", "residential", "living_street", "service", "pedestrian",
)
DEFAULT_MAX_SEGMENT_LENGTH_M = 100.0


class OSMReadError(CityAuditError, RuntimeError):
    """A PBF that cannot be read, or options that cannot be used with it."""


def is_osm_pbf(path: str | os.PathLike) -> bool:
    """True for a file name ending in ``.pbf`` (``.osm.pbf`` as Geofabrik names them)."""
    return str(path).lower().endswith(".pbf")


def parse_road_classes(raw: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"primary,secondary"`` or a list of highway values -> a tuple; ``None``/empty -> the defaults."""
    if raw is None:
        return DEFAULT_ROAD_CLASSES
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    classes = tuple(dict.fromkeys(c.strip() for c in items if c and c.strip()))
    return classes or DEFAULT_ROAD_CLASSES


def read_osm_road_segments(path: str | os.PathLike, bbox: BBox, *,
                           road_classes: Sequence[str] = DEFAULT_ROAD_CLASSES,
                           max_segment_length_m: float = DEFAULT_MAX_SEGMENT_LENGTH_M) -> gpd.GeoDataFrame:
    """Segments of the roads in ``path`` (an ``.osm.pbf``) that intersect ``bbox``.

    Returns the segments contract: ``segment_id, osm_way_id, highway, name, length_m, geometry``
    (LINESTRING, EPSG:4326), ordered by way id and position along the way. Segments crossing the
    bbox edge are kept whole. Raises ``OSMReadError`` for a missing/unreadable file or bad options.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise OSMReadError(f"OSM extract {str(path)!r} does not exist; download one (e.g. from Geofabrik) and pass its path")
    if not max_segment_length_m > 0:
        raise OSMReadError(f"max_segment_length_m must be positive, got {max_segment_length_m}")
    classes = list(parse_road_classes(road_classes))
    params = {"path": str(path), "road_classes": classes, "max_length_m": float(max_segment_length_m),
              "metric_crs": bbox.utm_crs(), "min_lon": bbox.min_lon, "min_lat": bbox.min_lat,
              "max_lon": bbox.max_lon, "max_lat": bbox.max_lat}
    try:
        with connect() as con:
            frame = con.execute((SQL_DIR / "osm_road_segments.sql").read_text(), params).df()
    except Exception as exc:  # noqa: BLE001 - duckdb raises several error types for a bad file
        raise OSMReadError(f"could not read roads from OSM extract {str(path)!r}: {exc}") from exc
    geometry = gpd.GeoSeries.from_wkb(frame["wkb"].map(bytes), crs="EPSG:4326") if len(frame) else gpd.GeoSeries([], crs="EPSG:4326")
    return gpd.GeoDataFrame(
        {
            "segment_id": frame["segment_id"].astype("string").to_numpy(),
            "osm_way_id": pd.array(frame["osm_way_id"], dtype="Int64"),
            "highway": frame["highway"].astype("string").to_numpy(),
            "name": frame["name"].astype("string").to_numpy(),
            "length_m": frame["length_m"].astype("float64").to_numpy(),
        },
        geometry=geometry.to_numpy(),
        crs="EPSG:4326",
    )
