"""The DuckDB CLI loads spatial offline from the installed wheel, as docs/planner-outputs.md says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from warehouse.db import connect, spatial_extension_path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "planner-outputs.md"
CLI = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")


def documented_lines() -> str:
    """The SQL block after the ``offline-cli`` marker in the docs."""
    text = DOCS.read_text(encoding="utf-8")
    return re.search(r"<!-- offline-cli:.*?-->\s*```sql\n(.*?)```", text, re.S).group(1)


@pytest.mark.skipif(CLI is None, reason="no duckdb CLI (pip install duckdb-cli==<duckdb's version>)")
def test_documented_lines_load_spatial_in_the_cli_offline(tmp_path):
    database = tmp_path / "audit.duckdb"
    with connect(database) as con:  # a minimal run database: the view the documented query reads
        con.execute("CREATE TABLE segments AS SELECT 'a' AS segment_id, ST_GeomFromText('LINESTRING (0 0, 1 1)') AS geometry")
        con.execute("CREATE VIEW coverage_gaps AS SELECT * FROM segments")
    home = tmp_path / "home"  # a user who has never installed an extension
    home.mkdir()
    script = documented_lines().replace("/path/printed/above/spatial.duckdb_extension", str(spatial_extension_path()))
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    first = subprocess.run([CLI, "-readonly", "-csv", str(database), "-c", script], capture_output=True, text=True,
                           env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == "1"
    assert list(home.glob(".duckdb/extensions/*/*/spatial.duckdb_extension"))
    later = subprocess.run([CLI, "-readonly", "-csv", str(database), "-c",
                            "SET autoinstall_known_extensions = false; LOAD spatial; SELECT ST_AsText(geometry) FROM segments;"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert later.returncode == 0 and "LINESTRING (0 0, 1 1)" in later.stdout, later.stderr
