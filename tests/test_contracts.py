"""The contracts layer: the DuckDB DDL agrees with the Arrow schemas; packages import only what they may."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import REPO
from contracts.errors import CityAuditError
from contracts.spatial import connect
from contracts.tables import DATABASE_TABLES, ddl

#: Which top-level packages each package may import (besides itself and third-party libraries).
ALLOWED = {
    "contracts": set(),
    "geo": {"contracts"},
    "classify": {"contracts"},
    "warehouse": {"contracts"},
    "flows": {"contracts", "geo", "classify", "warehouse"},
}
NO_TORCH = ("contracts", "geo", "warehouse")


def test_every_database_table_has_the_columns_and_types_of_its_arrow_schema():
    with connect() as con:
        con.execute(ddl())
        created = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert created == set(DATABASE_TABLES)
        for table, schema in DATABASE_TABLES.items():
            columns = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                                  "ORDER BY column_index", [table]).fetchall()
            arrow_columns = [(f.name, f.type) for f in schema]
            expected_names = [name for name, _ in arrow_columns]
            if table == "images":  # the point geometry exists only in DuckDB, built from lon/lat
                expected_names.insert(expected_names.index("lat") + 1, "geometry")
            assert [c for c, _ in columns] == expected_names, table
            # what DuckDB makes of an empty Arrow table of the schema must be the DDL's types
            empty = pa.Table.from_batches([], schema=schema)
            con.register("probe", empty)
            read = {row[0]: row[1] for row in con.execute("DESCRIBE probe").fetchall()}
            for column, ddl_type in columns:
                if column == "geometry":
                    continue
                assert read[column] == ddl_type, f"{table}.{column}: Arrow gives {read[column]}, DDL says {ddl_type}"
            con.unregister("probe")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below_them(package):
    ours = set(ALLOWED)
    for path in sorted((REPO / package).rglob("*.py")):
        imported = _imports(path)
        wrong = (imported & ours) - ALLOWED[package] - {package}
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"
        if package in NO_TORCH:
            assert not imported & {"torch", "open_clip", "torchvision"}, path


def test_no_import_cycles_between_modules():
    modules = {}
    for package in ALLOWED:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:  # module-level imports only: imports inside functions run on use
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name}

    def visit(node, trail):
        if node in trail:
            raise AssertionError(f"import cycle: {' -> '.join([*trail[trail.index(node):], node])}")
        for target in graph.get(node, ()):
            visit(target, [*trail, node])

    for module in graph:
        visit(module, [])


def test_every_error_a_user_can_fix_derives_from_the_root():
    from classify import adapted_visual, backbone, checkpoints, descriptions, labels, mhadapter, schema, train
    from contracts import spatial, tables
    from geo import bbox, osm, sources
    from geo.mapillary import errors
    from warehouse import raster

    modules = [adapted_visual, backbone, checkpoints, descriptions, labels, mhadapter, schema, train, spatial, tables,
               bbox, osm, sources, errors, raster]
    found = [value for module in modules for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == module.__name__]
    assert len(found) >= 15
    assert all(issubclass(error, CityAuditError) for error in found), [e for e in found if not issubclass(e, CityAuditError)]


def test_conform_table_casts_in_arrow_as_conform_does_in_pandas():
    import pandas as pd

    from contracts.tables import IMAGES, IMAGES_REQUIRED, ContractError, conform, conform_table

    frame = pd.DataFrame({"image_id": ["a", "b"], "lon": [9, 10], "lat": [48.5, None], "path": ["a.jpg", None],
                          "captured_at": pd.to_datetime(["2024-05-01 10:00", None]), "extra": [1, 2]})
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    arrow = arrow.set_column(0, "image_id", arrow.column("image_id").cast(pa.large_string()))
    expected = conform(frame, IMAGES, IMAGES_REQUIRED)
    assert conform_table(arrow, IMAGES, IMAGES_REQUIRED).equals(expected)
    as_text = frame.assign(captured_at=["2024-05-01T10:00:00Z", None])  # strings: the pandas path parses them
    assert conform_table(pa.Table.from_pandas(as_text), IMAGES, IMAGES_REQUIRED).equals(conform(as_text, IMAGES, IMAGES_REQUIRED))
    with pytest.raises(ContractError, match=r"missing required column\(s\) \['path'\]"):
        conform_table(arrow.drop_columns(["path"]), IMAGES, IMAGES_REQUIRED)
