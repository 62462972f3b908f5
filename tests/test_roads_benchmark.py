"""benchmarks/join.py runs end to end on a small size and the engines agree (no timing asserts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_join_benchmark_small_run_agrees():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "join.py"), "--points", "3000", "--segments", "800",
         "--pbf", str(REPO / "tests" / "data" / "pyrosm_test.osm.pbf")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "agreement: 0 points matched by only one engine" in out
    # the pipeline's heading-aware SQL chose the same segment as the shapely peer for every image
    assert "heading agreement: 0 images matched by one side only, 0 matched to another segment" in out
    # the pipeline's numpy matcher chose the same segment as match_images.sql for every image
    assert "numpy vs match_images.sql: 0 images matched by one side only, 0 matched to another segment" in out
    assert re.search(r"ratio: DuckDB is [0-9.]+x faster than geopandas sjoin_nearest", out)
    matched = re.findall(r"^(?:duckdb|geopandas) .*?\s([0-9,]+)\s+\d+\s+\d+\s+\d+$", out, flags=re.M)
    assert len(matched) == 3 and len(set(matched)) == 1, out  # every engine matched the same points
