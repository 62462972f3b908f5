"""No process of a run outlives it: not its Prefect server, not its decode workers, even after kill -9."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import psutil
import pytest

from geo.imagery import SAMPLE_AREA

from tests.run_support import Run, accepts, command_line, describe, marked_processes, wait_until_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

#: Decode in worker processes (a user-facing setting, see README) so that there are workers to kill.
WORKERS = {"CITY_AUDIT_DECODE": "processes", "CITY_AUDIT_DECODE_WORKERS": "2"}


def _decode_workers(run: Run) -> list:
    """The run's DataLoader workers: the children of its forkserver.

    A worker is forked from the forkserver, so its command line is the forkserver's own; the
    forkserver is the one such process whose parent (the run) is not a forkserver."""
    workers = []
    for proc in run.descendants():
        try:
            parent = proc.parent()
        except psutil.Error:
            continue
        if parent is not None and "forkserver" in command_line(proc) and "forkserver" not in command_line(parent):
            try:
                workers.extend(proc.children())
            except psutil.Error:
                pass
    return workers


def photo_folder(folder: Path, copies: int) -> list[str]:
    """A folder of ``copies`` x the 19 sample images (so that classification lasts long enough to be caught
    in the act); returns the ``--source folder`` options for it."""
    meta = pd.read_parquet(SAMPLE_AREA / "images.parquet").drop(columns=["sha256"])
    rows = []
    for copy in range(copies):
        (folder / f"{copy:03d}").mkdir(parents=True)
        for row in meta.itertuples(index=False):
            shutil.copy(SAMPLE_AREA / row.path, folder / f"{copy:03d}" / Path(row.path).name)
        part = meta.copy()
        part["image_id"] = [f"{copy:03d}-{i}" for i in meta["image_id"]]
        part["path"] = [f"{copy:03d}/{Path(p).name}" for p in meta["path"]]
        rows.append(part)
    pd.concat(rows, ignore_index=True).to_parquet(folder / "images.parquet")
    return ["--source", "folder", "--images", str(folder)]


def test_kill_9_during_classification_leaves_no_process_and_no_port(tmp_path):
    out = tmp_path / "out"
    source = photo_folder(tmp_path / "photos", copies=16)  # 304 images: some seconds of decoding on 2 cores
    run = Run(out, env=WORKERS, source=source)
    try:
        run.wait_for(lambda: run.saw("Task run 'load backbone"), 300, "classification stage")
        ports = run.listening_ports()
        assert ports, "the run's own Prefect server should listen on a port"
        run.wait_for(lambda: len(_decode_workers(run)) >= 1, 120, "decode worker processes")
        assert len(marked_processes(run.marker)) >= 4  # run, server, forkserver, workers
    except BaseException:
        run.process.kill()
        raise
    run.kill9()
    left = wait_until_gone(run.marker, timeout_s=5)
    assert not left, f"processes outlived kill -9 of the run:\n{describe(left)}"
    assert not [p for p in ports if accepts(p)], f"ports still listening after kill -9: {ports}"

    rerun = Run(out, env=WORKERS, source=source)
    try:
        assert rerun.finish(timeout_s=400) == 0, rerun.output[-3000:]
    finally:
        rerun.process.kill()
    assert "images:                    304" in rerun.output
    assert "Error logging to API" not in rerun.output  # logs were sent before the server stopped
    left = wait_until_gone(rerun.marker, timeout_s=5)
    assert not left, f"processes outlived a finished run:\n{describe(left)}"
    assert not marked_processes(run.marker)


def test_a_configured_server_that_does_not_answer_is_one_line_and_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    from flows.server import free_port
    from tests.run_support import REPO, SAMPLE_BBOX

    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--bbox", SAMPLE_BBOX, "--source", "sample",
                             "--model", "tiny", "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr[-2000:]
    assert "did not answer within 1 s" in err[0] and "unset PREFECT_API_URL" in err[0]
    assert not (tmp_path / "out" / "run.json").exists()


def test_our_server_that_misses_the_deadline_is_retried_once_then_one_error_and_nothing_left(monkeypatch):
    import os

    import flows.server
    from flows.server import PrefectStartError, prefect_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(flows.server, "configured_api_url", lambda: None)  # an earlier test's Prefect settings
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "0.3")  # no server starts that fast
    started = []
    original = flows.server.OwnedServer.start

    def recording_start(self):
        original(self)
        started.append(self.process)

    monkeypatch.setattr(flows.server.OwnedServer, "start", recording_start)
    with pytest.raises(PrefectStartError, match="did not start within 0.3 s, twice"):
        with prefect_api() as server:
            server.ready()
    assert len(started) == 2, "one start and one retry"
    assert all(p.poll() is not None for p in started), "a server outlived the failed start"
    assert "PREFECT_API_URL" not in os.environ


def test_our_server_answers_then_stops_and_its_port_closes(monkeypatch):
    import flows.server
    from flows.server import configured_api_url, prefect_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(flows.server, "configured_api_url", lambda: None)  # an earlier test's Prefect settings
    with prefect_api() as server:
        url = server.ready()
        process, port = server.owned.process, server.owned.port
        assert url == f"http://127.0.0.1:{port}/api" and accepts(port)
        assert process.pid in {p.pid for p in psutil.Process().children()}
        import prefect.settings  # noqa: F401 - Prefect may read our URL from the environment now
    assert process.poll() is not None and not accepts(port)
    assert configured_api_url() != url, "a later run in this process must start a server again, not reuse ours"
