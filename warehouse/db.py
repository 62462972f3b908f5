"""The warehouse's SQL files, and DuckDB with spatial (from ``contracts.spatial``)."""

from __future__ import annotations

from pathlib import Path

from contracts.spatial import SpatialExtensionError, connect, spatial_extension_path  # noqa: F401 - the warehouse API

SQL_DIR = Path(__file__).parent / "sql"


def sql(name: str) -> str:
    """The text of ``warehouse/sql/<name>.sql``."""
    return (SQL_DIR / f"{name}.sql").read_text()
