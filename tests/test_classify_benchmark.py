"""benchmarks/classify.py runs end to end on the tiny model (no timing asserts: only that every row is measured)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_classify_benchmark_small_run_prints_every_row():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "classify.py"), "--batch-size", "4", "--repeats", "2",
         "--warmup", "0", "--images", "8", "--workers", "0", "--threads", "1", "--no-cuda"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in ("bare open_clip encode_image", "backbone pass", "8 zero-shot heads", "one by one", "fused"):
        assert re.search(rf"^.*{re.escape(row)}.*\[[0-9.]+-[0-9.]+\]$", out, flags=re.M), (row, out)
    assert re.search(r"cost [0-9.]+x one bare CLIP image forward, median over rounds \(goal <= 1.15\): (met|NOT met)", out)
    assert "note: --images 8 < 256 does not measure the real decode path" in out
    assert re.search(r"end to end on cpu, 8 JPEGs .*: [0-9.]+ img/s", out)
