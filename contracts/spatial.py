"""DuckDB connections with the spatial extension, loaded from the PyPI package, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from contracts.errors import CityAuditError


class SpatialExtensionError(CityAuditError, RuntimeError):
    """The spatial extension file is missing or does not match the installed duckdb."""


def spatial_extension_path() -> Path:
    """The ``spatial.duckdb_extension`` shipped by ``duckdb-extension-spatial`` for this duckdb version."""
    try:
        import duckdb_extension_spatial
    except ImportError:
        raise SpatialExtensionError(
            f"the duckdb-extension-spatial package is not installed; pip install duckdb-extension-spatial=={duckdb.__version__}"
        ) from None
    path = Path(duckdb_extension_spatial.__file__).parent / "extensions" / f"v{duckdb.__version__}" / "spatial.duckdb_extension"
    if not path.is_file():
        raise SpatialExtensionError(
            f"no spatial extension for duckdb {duckdb.__version__} at {path}; install "
            f"duckdb-extension-spatial=={duckdb.__version__} (its version must equal duckdb's)"
        )
    return path


def connect(database: str | os.PathLike = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB database with spatial loaded and extension downloads switched off."""
    con = duckdb.connect(
        str(database),
        read_only=read_only,
        config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"},
    )
    con.execute(f"LOAD '{spatial_extension_path()}'")  # a local file path from the installed package
    return con
