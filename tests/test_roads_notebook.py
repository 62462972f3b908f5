"""The planner notebook runs top to bottom against the sample run and draws its maps."""

from __future__ import annotations

from pathlib import Path

import pytest

from warehouse.db import connect

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "planner_audit.ipynb"


def test_planner_notebook_executes_on_a_finished_run(sample_run, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CITY_AUDIT_RUN", sample_run["out"])
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel must use its inline backend to return figures
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    with connect(Path(sample_run["out"]) / "audit.duckdb", read_only=True) as con:
        n_segments = con.execute("SELECT count(*) FROM segments").fetchone()[0]
    assert f"segments in the run: {n_segments}" in text
    assert "UNTRAINED" in text  # the tiny model's run says so
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the label map and the coverage raster
