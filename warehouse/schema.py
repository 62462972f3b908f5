"""The data contracts between stages (architecture §2), as Arrow schemas.

Every stage writes and reads these and nothing else. Python-side tables use these column
names and types; the DuckDB tables are created from ``sql/schema.sql`` with the same columns.
Coordinates are WGS84 longitude/latitude; geometry travels as WKB.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

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
        ("path", pa.string()),  # relative to the run's image store
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

FAILURES = pa.schema(
    [
        ("item_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)


class ContractError(ValueError):
    """A table that does not follow a data contract (missing columns, wrong types)."""


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


def empty_failures() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="str") for name in FAILURES.names})
