"""Build a run's DuckDB database: load the stage tables, match images to roads, aggregate.

``build_audit_database`` is the whole warehouse stage: it creates the contract tables
(``sql/schema.sql``), loads images, segments, predictions and failures, matches each image to
its nearest segment (``warehouse/matching.py``), aggregates labels per segment
(``sql/aggregate_segments.sql``) and creates the planner views (``sql/views.sql``).
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import geopandas as gpd
import pandas as pd
import pyarrow as pa

from contracts.errors import CityAuditError
from contracts.tables import ddl
from warehouse.db import connect, sql
from warehouse.defaults import DEFAULT_HEADING_PENALTY_M, DEFAULT_MAX_DISTANCE_M
from warehouse.matching import match_connection  # replaced sql/match_images.sql (the benchmark's reference)

#: The local bearing of a segment is taken between points this far either side of the image's nearest point.
DEFAULT_BEARING_WINDOW_M = 10.0
#: Unmatched images report their nearest segment within this many times the matching distance.
UNMATCHED_SEARCH_FACTOR = 10.0
WILSON_Z_95 = 1.959964
#: ``$CITY_AUDIT_DUCKDB_MEMORY`` (e.g. ``2GB``) caps DuckDB's memory while it builds or publishes a run's
#: database; past it DuckDB spills sorts, joins and aggregates to a temporary folder beside the database.
#: Unset, DuckDB's own default applies (80 % of the machine's memory). A fixed 512 MB default was tried and
#: dropped: it saved little at 100k images, and at 1M images the predictions' primary-key index (8M keys)
#: does not fit in it, so the build failed (benchmarks/README.md, the city benchmark).
DUCKDB_MEMORY_ENV = "CITY_AUDIT_DUCKDB_MEMORY"


class DuckDBMemoryError(CityAuditError, MemoryError):
    """DuckDB ran out of memory while building or publishing a run's database."""


def duckdb_memory() -> str | None:
    """The memory cap from ``$CITY_AUDIT_DUCKDB_MEMORY`` (None when unset: DuckDB's default)."""
    value = os.environ.get(DUCKDB_MEMORY_ENV, "").strip()
    if not value:
        return None
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[KMGT]i?B", value, flags=re.IGNORECASE):
        raise ValueError(f"{DUCKDB_MEMORY_ENV}={value!r}: give a size such as 512MB or 2GB, or unset it")
    return value


def limit_memory(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Cap ``con``'s memory at ``duckdb_memory()``, if one is set."""
    limit = duckdb_memory()
    if limit:
        con.execute(f"SET memory_limit = '{limit}'")  # a validated size: SET takes no bound parameter
    return con


@contextmanager
def memory_errors(what: str) -> Iterator[None]:
    """Turn DuckDB's out-of-memory error during ``what`` into a ``DuckDBMemoryError`` that says what to do."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        limit = duckdb_memory()
        advice = (f"raise {DUCKDB_MEMORY_ENV} (now {limit}) or unset it" if limit else
                  f"free memory on this machine or run on one with more (DuckDB's limit: 80 % of it; "
                  f"{DUCKDB_MEMORY_ENV} sets another)")
        raise DuckDBMemoryError(f"DuckDB ran out of memory while {what}: {advice}; "
                                f"DuckDB said: {str(exc).splitlines()[0]}") from exc


@dataclass
class AuditCounts:
    images: int
    segments: int
    predictions: int
    matched_images: int
    segments_with_images: int
    failures: int


def _load_images(con: duckdb.DuckDBPyConnection, images: pd.DataFrame | str | os.PathLike) -> None:
    """Insert the images table: a frame, or a Parquet file of the images contract (read by DuckDB, streaming)."""
    if isinstance(images, (str, os.PathLike)):
        con.execute("CREATE TEMP VIEW images_in AS SELECT * FROM read_parquet(" + _quoted(images) + ")")
    else:
        con.register("images_in", images)
    con.execute("""
        INSERT INTO images
        SELECT image_id, source, sequence_id, captured_at, compass_angle, is_pano, camera_type, lon, lat,
               ST_Point(lon, lat), width, height, path, sha256, fetched_at
        FROM images_in
    """)
    if isinstance(images, (str, os.PathLike)):
        con.execute("DROP VIEW images_in")
    else:
        con.unregister("images_in")


def _quoted(path: str | os.PathLike) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _load_segments(con: duckdb.DuckDBPyConnection, segments: gpd.GeoDataFrame) -> None:
    frame = pd.DataFrame(segments.drop(columns="geometry"))
    frame["wkb"] = segments.geometry.to_wkb()
    con.register("segments_in", frame)
    con.execute("""
        INSERT INTO segments
        SELECT segment_id, osm_way_id, highway, name, length_m, ST_GeomFromWKB(wkb) FROM segments_in
    """)
    con.unregister("segments_in")


def _load_table(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table | pd.DataFrame) -> None:
    con.register("rows_in", data)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM rows_in")  # table names are constants of this module
    con.unregister("rows_in")


def _load_predictions(con: duckdb.DuckDBPyConnection, predictions: pa.Table | Sequence[str | os.PathLike],
                      run_id: str) -> None:
    if isinstance(predictions, pa.Table):
        _load_table(con, "predictions",
                    predictions.append_column("run_id", pa.array([run_id] * predictions.num_rows, pa.string())))
    elif len(predictions):
        con.execute(sql("load_predictions"), {"files": [str(p) for p in predictions], "run_id": run_id})


def build_audit_database(database: str | os.PathLike, *, images: pd.DataFrame | str | os.PathLike, segments: gpd.GeoDataFrame,
                         predictions: pa.Table | Sequence[str | os.PathLike], failures: pd.DataFrame, run_id: str,
                         metric_crs: str,
                         max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
                         heading_penalty_m: float = DEFAULT_HEADING_PENALTY_M,
                         bearing_window_m: float = DEFAULT_BEARING_WINDOW_M,
                         slice_by_year: bool = False) -> AuditCounts:
    """Create ``database`` from scratch and fill it; returns row counts for the run manifest.

    ``images``: the images contract as a frame or a Parquet file (``ImageCollection.image_source``);
    ``predictions``: the predictions contract without ``run_id`` (added here), as a table or as the
    classification stage's Parquet chunk files (read by DuckDB in one streaming scan);
    ``metric_crs`` is a projected CRS in metres (e.g. the bbox's UTM zone) used for distances.
    Matching: nearest segment within ``max_distance_m``, a segment across a camera's heading
    counting ``heading_penalty_m`` further away (``warehouse/matching.py``); images left over get
    a reason in ``unmatched_reasons``. ``slice_by_year`` also fills ``segment_attributes_by_year``.
    """
    database = Path(database)
    database.unlink(missing_ok=True)
    Path(f"{database}.wal").unlink(missing_ok=True)
    with memory_errors("building the run's database"), connect(database) as con:
        limit_memory(con)
        con.execute(ddl())
        _load_images(con, images)
        _load_segments(con, segments)
        _load_predictions(con, predictions, run_id)
        _load_table(con, "failures", failures)
        match_connection(con, metric_crs, max_distance_m, heading_penalty_m, bearing_window_m)
        con.execute(sql("unmatched_images"), {"metric_crs": metric_crs, "max_distance_m": max_distance_m,
                                              "search_distance_m": max_distance_m * UNMATCHED_SEARCH_FACTOR})
        con.execute(sql("aggregate_segments"))
        con.execute("INSERT INTO segment_attributes BY NAME SELECT * EXCLUDE (capture_year) FROM segment_aggregates($z, false)",
                    {"z": WILSON_Z_95})
        if slice_by_year:
            con.execute("INSERT INTO segment_attributes_by_year BY NAME SELECT * FROM segment_aggregates($z, true) "
                        "WHERE capture_year IS NOT NULL", {"z": WILSON_Z_95})
        con.execute(sql("views"))
        counts = con.execute("""
            SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM segments), (SELECT count(*) FROM predictions),
                   (SELECT count(*) FROM matches), (SELECT count(DISTINCT segment_id) FROM matches),
                   (SELECT count(*) FROM failures)
        """).fetchone()
    return AuditCounts(*counts)
