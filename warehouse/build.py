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
from contracts.tables import UNIQUE_KEYS, ddl
from warehouse.db import connect, sql
from warehouse.defaults import DEFAULT_HEADING_PENALTY_M, DEFAULT_MAX_DISTANCE_M
from warehouse.matching import match_connection  # replaced sql/match_images.sql (the benchmark's reference)

#: The local bearing of a segment is taken between points this far either side of the image's nearest point.
DEFAULT_BEARING_WINDOW_M = 10.0
#: Unmatched images report their nearest segment within this many times the matching distance.
UNMATCHED_SEARCH_FACTOR = 10.0
WILSON_Z_95 = 1.959964
#: ``$CITY_AUDIT_DUCKDB_MEMORY`` (e.g. ``2GB``) caps DuckDB's memory while it builds or publishes a run's
#: database; past it DuckDB spills sorts, joins and aggregates to a temporary folder beside the database
#: (DuckDB's own default, ``<database>.tmp``). Unset, the cap is ``DEFAULT_DUCKDB_MEMORY``; ``none`` leaves
#: DuckDB's default (80 % of the machine's memory). History: a 512 MB default failed the 1M-image build,
#: because the predictions' PRIMARY KEY index (8M keys) must stay in memory; the image-sized tables now
#: have no such index (``contracts/sql/schema.sql``, ``check_unique_keys``), so everything that remains
#: can spill, and 1 GB built 1M images (benchmarks/README.md, the city benchmark).
DUCKDB_MEMORY_ENV = "CITY_AUDIT_DUCKDB_MEMORY"
DEFAULT_DUCKDB_MEMORY = "1GB"


class DuckDBMemoryError(CityAuditError, MemoryError):
    """DuckDB ran out of memory while building or publishing a run's database."""


class DuplicateRowsError(CityAuditError, ValueError):
    """A run-database table has two rows with the same key (``contracts.tables.UNIQUE_KEYS``)."""


def duckdb_memory() -> str | None:
    """The memory cap: ``$CITY_AUDIT_DUCKDB_MEMORY``, ``DEFAULT_DUCKDB_MEMORY`` when unset, None for ``none``."""
    value = os.environ.get(DUCKDB_MEMORY_ENV, "").strip()
    if not value:
        return DEFAULT_DUCKDB_MEMORY
    if value.lower() == "none":
        return None
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[KMGT]i?B", value, flags=re.IGNORECASE):
        raise ValueError(f"{DUCKDB_MEMORY_ENV}={value!r}: give a size such as 512MB or 2GB, or none for "
                         f"DuckDB's default (80 % of the memory), or unset it ({DEFAULT_DUCKDB_MEMORY})")
    return value


def limit_memory(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Cap ``con``'s memory at ``duckdb_memory()``, if there is one."""
    limit = duckdb_memory()
    if limit:
        con.execute(f"SET memory_limit = '{limit}'")  # a validated size: SET takes no bound parameter
    return con


def check_unique_keys(con: duckdb.DuckDBPyConnection, tables: Sequence[str] = tuple(UNIQUE_KEYS)) -> None:
    """Raise ``DuplicateRowsError`` when one of ``tables`` repeats a key (``contracts.tables.UNIQUE_KEYS``).

    These tables declare no PRIMARY KEY (its index would have to fit in memory); one aggregate per table,
    which DuckDB can spill, stands in for it. The loaders make the keys unique (one chunk file per chunk
    of distinct images, one match or reason per image), so this fires only on a bug or a corrupt input.
    """
    for table in tables:
        keys = UNIQUE_KEYS[table]
        columns = ", ".join(keys)  # constants of contracts.tables
        repeated = con.execute(f"SELECT {columns}, count(*) FROM {table} GROUP BY ALL HAVING count(*) > 1 LIMIT 1"
                               ).fetchone()
        if repeated:
            key = ", ".join(f"{k}={v!r}" for k, v in zip(keys, repeated))
            raise DuplicateRowsError(f"the run database's {table} table has {repeated[-1]} rows for {key}; "
                                     f"its key ({columns}) must be unique: the stage that wrote it has a bug, "
                                     f"or an input (a chunk file, the images table) repeats a row")


@contextmanager
def memory_errors(what: str) -> Iterator[None]:
    """Turn DuckDB's out-of-memory error during ``what`` into a ``DuckDBMemoryError`` that says what to do."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        limit = duckdb_memory()
        advice = (f"raise {DUCKDB_MEMORY_ENV} (now {limit}; none: DuckDB's default, 80 % of the memory)" if limit else
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
        check_unique_keys(con, ("images", "predictions"))  # before matching joins on them
        match_connection(con, metric_crs, max_distance_m, heading_penalty_m, bearing_window_m)
        con.execute(sql("unmatched_images"), {"metric_crs": metric_crs, "max_distance_m": max_distance_m,
                                              "search_distance_m": max_distance_m * UNMATCHED_SEARCH_FACTOR})
        check_unique_keys(con, ("matches", "unmatched_reasons"))
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
