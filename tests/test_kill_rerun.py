"""kill -9 at each stage of a run, then a rerun into the same --out, equals a clean run.

One Prefect server (the project's own ``flows.server.OwnedServer``, a real one) serves every run
through PREFECT_API_URL, the way a user's running server would, so the runs do not each wait for one.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from flows.server import OwnedServer
from tests.run_support import Run, describe, wait_until_gone
from warehouse.outputs import LOCK_NAME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

#: Where to kill: the log line after which the run is inside that stage (the stage before it finished).
STAGES = {
    "collect": "sample: 1 work unit(s) cover the bbox",
    "classify": "Task run 'load backbone",
    "build database": "classification: chunk 1 of 1 done",  # the flow's own step, not a task
    "publish": "Task run 'build audit database",
}


@pytest.fixture(scope="module")
def prefect_server():
    server = OwnedServer()
    server.start()
    try:
        assert server.wait(300), f"test Prefect server did not start: {server.last_line()}"
        yield server.api_url
    finally:
        server.stop()


#: run.json counts that say what a rerun reused; they differ from a clean run by design
REUSE_COUNTS = {"predictions_reused", "classification_chunks_reused"}


def signature(out: Path) -> dict:
    """What a run produced, without timestamps or run ids: images and checksums, predictions, counts."""
    images = pq.read_table(out / "images.parquet", columns=["image_id", "sha256"]).to_pylist()
    with duckdb.connect(str(out / "audit.duckdb"), read_only=True) as con:
        predictions = con.execute("SELECT image_id, attribute, label, round(confidence, 5), method, model_id "
                                  "FROM predictions ORDER BY image_id, attribute").fetchall()
        tables = {name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                  for (name,) in con.execute("SHOW TABLES").fetchall()}
    manifest = json.loads((out / "run.json").read_text())
    # what a rerun took over from the killed run (complete classification chunks) is the one honest difference
    counts = {k: v for k, v in manifest["counts"].items() if k not in REUSE_COUNTS}
    return {"images": sorted((r["image_id"], r["sha256"]) for r in images), "predictions": predictions,
            "tables": tables, "counts": counts, "failures": manifest["failures"],
            "published": sorted(manifest["outputs"])}


def test_kill_9_at_each_stage_then_rerun_equals_a_clean_run(tmp_path, prefect_server):
    env = {"PREFECT_API_URL": prefect_server}
    clean = Run(tmp_path / "clean", env=env)
    assert clean.finish(timeout_s=300) == 0, clean.output[-3000:]
    expected = signature(tmp_path / "clean")
    assert len(expected["images"]) == 19 and len(expected["predictions"]) == 19 * 8

    for stage, line in STAGES.items():
        out = tmp_path / stage.replace(" ", "-")
        killed = Run(out, env=env)
        try:
            killed.wait_for(lambda: killed.saw(line), 240, f"stage {stage}")
        except BaseException:
            killed.process.kill()
            raise
        killed.kill9()
        assert not wait_until_gone(killed.marker, timeout_s=5), describe(wait_until_gone(killed.marker, 0))
        lock = out / LOCK_NAME
        assert lock.read_text().strip() == f"pid {killed.process.pid}", "the killed run's lock is left behind"
        assert not (out / "run.json").exists(), f"killed in {stage}: no run.json may be published"

        rerun = Run(out, env=env)  # the stale lock of a dead pid must not block it
        assert rerun.finish(timeout_s=300) == 0, f"rerun after kill in {stage}:\n{rerun.output[-3000:]}"
        assert signature(out) == expected, f"rerun after kill -9 in {stage} differs from the clean run"
        assert not list(out.glob(".staging-*")), "a staging folder survived the rerun"


def test_a_lock_of_a_dead_run_is_taken_over_and_a_leftover_holder_is_named(tmp_path):
    import subprocess
    import sys

    from warehouse.outputs import OutputFolderError, claim

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(f"pid {dead.stdout.strip()}")  # a run that died: no flock, only its file
    with claim(out):
        assert (out / LOCK_NAME).read_text().strip() != f"pid {dead.stdout.strip()}"
    # a process the dead run left behind still holds the flock: refused, and the message says what to do
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(out / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (out / LOCK_NAME).write_text(f"pid {dead.stdout.strip()}")
        with pytest.raises(OutputFolderError, match="has ended, but a process it left still holds the lock"):
            with claim(out):
                pass
    finally:
        holder.kill()
        holder.wait()
