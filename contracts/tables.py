"""The data contracts between stages (architecture §2), as Arrow schemas.

Every stage writes and reads these and nothing else. The DuckDB tables of the run database are
created from ``sql/schema.sql`` (``ddl()``); ``tests/test_contracts.py`` checks that its columns
and types agree with the schemas here. Coordinates are WGS84 longitude/latitude; geometry
travels as WKB (``images.geometry`` exists only in DuckDB, built from lon/lat).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa

from contracts.errors import CityAuditError

DDL_FILE = Path(__file__).parent / "sql" / "schema.sql"

IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("sequence_id", pa.string()),
        ("captured_at", pa.timestamp("us", tz="UTC")),
        ("compass_angle", pa.float64()),
        ("is_pano", pa.bool_()),
        ("camera_type", pa.string()),
        ("lon", pa.float64()),
        ("lat", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("path", pa.string()),  # relative to the run's image store, or absolute for a folder read in place
                                #   (resolve it with contracts.results.image_file)
        ("sha256", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)
#: Columns an image table must have; the rest of IMAGES may be missing (filled with nulls).
IMAGES_REQUIRED = ("image_id", "lon", "lat", "path")

SEGMENTS = pa.schema(
    [
        ("segment_id", pa.string()),
        ("osm_way_id", pa.int64()),
        ("highway", pa.string()),
        ("name", pa.string()),
        ("length_m", pa.float64()),
        ("geometry", pa.binary()),  # WKB LINESTRING, EPSG:4326
    ]
)

#: Predictions as the classifier writes them; the run database adds ``run_id``.
PREDICTIONS = pa.schema(
    [
        ("image_id", pa.string()),
        ("attribute", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float32()),
        ("probabilities", pa.map_(pa.string(), pa.float32())),
        ("method", pa.string()),
        ("model_id", pa.string()),
    ]
)

MATCHES = pa.schema(
    [
        ("image_id", pa.string()),
        ("segment_id", pa.string()),
        ("distance_m", pa.float64()),
        ("heading_difference_deg", pa.float64()),
    ]
)

UNMATCHED_REASONS = pa.schema(
    [
        ("image_id", pa.string()),
        ("reason", pa.string()),
        ("nearest_segment_id", pa.string()),
        ("nearest_distance_m", pa.float64()),
    ]
)

_SEGMENT_ATTRIBUTE_VALUES = [
    ("n_images", pa.int32()),
    ("label", pa.string()),
    ("share", pa.float64()),
    ("share_ci_low", pa.float64()),
    ("share_ci_high", pa.float64()),
    ("mean_confidence", pa.float64()),
    ("label_counts", pa.map_(pa.string(), pa.int64())),
    ("first_captured_at", pa.timestamp("us", tz="UTC")),
    ("last_captured_at", pa.timestamp("us", tz="UTC")),
]
SEGMENT_ATTRIBUTES = pa.schema([("segment_id", pa.string()), ("attribute", pa.string()), *_SEGMENT_ATTRIBUTE_VALUES])
SEGMENT_ATTRIBUTES_BY_YEAR = pa.schema(
    [("segment_id", pa.string()), ("attribute", pa.string()), ("capture_year", pa.int32()), *_SEGMENT_ATTRIBUTE_VALUES])

#: One row per item (image, tile, search box) that could not be collected, decoded or classified.
FAILURES = pa.schema(
    [
        ("item_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)
FAILURE_COLUMNS = tuple(FAILURES.names)

#: The run database's tables and their contracts (``sql/schema.sql`` creates them).
DATABASE_TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "segments": SEGMENTS,
    "predictions": PREDICTIONS.append(pa.field("run_id", pa.string())),
    "matches": MATCHES,
    "segment_attributes": SEGMENT_ATTRIBUTES,
    "unmatched_reasons": UNMATCHED_REASONS,
    "segment_attributes_by_year": SEGMENT_ATTRIBUTES_BY_YEAR,
    "failures": FAILURES,
}

#: The key of each run-database table with a row per image or prediction. ``sql/schema.sql`` declares no
#: PRIMARY KEY for these (DuckDB would hold its index in memory: 8M keys at 1M images); they are unique by
#: construction, and ``warehouse.build.check_unique_keys`` checks them once the database is built.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "images": ("image_id",),
    "predictions": ("image_id", "attribute", "run_id"),
    "matches": ("image_id",),
    "unmatched_reasons": ("image_id",),
}


class ContractError(CityAuditError, ValueError):
    """A table that does not follow a data contract (missing columns, wrong types)."""


def ddl() -> str:
    """The DuckDB DDL creating every table of the run database."""
    return DDL_FILE.read_text()


def conform(frame: pd.DataFrame, schema: pa.Schema, required: tuple[str, ...] = (), what: str = "table") -> pa.Table:
    """Cast a DataFrame to a contract schema: add missing optional columns as nulls, drop extras.

    Raises ``ContractError`` naming the missing required columns or the column that cannot be
    converted.
    """
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ContractError(f"{what} is missing required column(s) {missing}; it has {list(frame.columns)}")
    arrays = []
    for field in schema:
        if field.name in frame.columns:
            column = frame[field.name]
            try:
                if pa.types.is_timestamp(field.type):
                    column = pd.to_datetime(column, utc=True, format="mixed")
                arrays.append(pa.array(column, type=field.type, from_pandas=True))
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
                raise ContractError(f"{what}: column {field.name!r} cannot be read as {field.type}: {exc}") from None
        else:
            arrays.append(pa.nulls(len(frame), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    """True when Arrow casts ``have`` to ``want`` exactly as ``conform``'s pandas path converts it."""
    if have == want or pa.types.is_null(have):
        return True
    if pa.types.is_string(want):
        return pa.types.is_string(have) or pa.types.is_large_string(have)
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(have)  # naive values are UTC, as pd.to_datetime(utc=True) reads them
    if pa.types.is_floating(want):
        return pa.types.is_floating(have) or pa.types.is_integer(have)
    if pa.types.is_integer(want):
        return pa.types.is_integer(have)
    return False


def conform_table(table: pa.Table, schema: pa.Schema, required: tuple[str, ...] = (), what: str = "table") -> pa.Table:
    """``conform`` for an Arrow table: column by column in Arrow, without a pandas copy of the whole table.

    Columns of types Arrow converts the same way (strings, timestamps, numbers) are cast; a table with
    any other column goes through ``conform`` (pandas), so both give the same table and the same errors.
    """
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ContractError(f"{what} is missing required column(s) {missing}; it has {table.column_names}")
    if not all(_castable(table.schema.field(f.name).type, f.type) for f in schema if f.name in table.column_names):
        return conform(table.to_pandas(), schema, required, what)
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            try:
                arrays.append(table.column(field.name).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ContractError(f"{what}: column {field.name!r} cannot be read as {field.type}: {exc}") from None
        else:
            arrays.append(pa.nulls(len(table), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def failures_frame(rows: Iterable[tuple[str, str, str]] = ()) -> pd.DataFrame:
    """A failures table (``item_id, stage, reason``) from ``(item_id, stage, reason)`` tuples; empty by default."""
    rows = list(rows)
    if not rows:
        return pd.DataFrame({name: pd.Series(dtype="str") for name in FAILURE_COLUMNS})
    return pd.DataFrame(rows, columns=list(FAILURE_COLUMNS))


def empty_failures() -> pd.DataFrame:
    """An empty failures table."""
    return failures_frame()
