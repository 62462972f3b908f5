"""No process of a run outlives it: not its Prefect server, not its decode workers, even after kill -9."""

from __future__ import annotations

import psutil
import pytest

from tests.run_support import Run, accepts, command_line, describe, marked_processes, wait_until_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

#: Decode in worker processes (a user-facing setting, see README) so that there are workers to kill.
WORKERS = {"CITY_AUDIT_DECODE": "processes", "CITY_AUDIT_DECODE_WORKERS": "2"}


def _decode_workers(run: Run) -> list:
    """The run's DataLoader workers: children of its forkserver."""
    workers = []
    for proc in run.descendants():
        try:
            parent = proc.parent()
        except psutil.Error:
            continue
        if parent is not None and "forkserver" in command_line(parent) and "forkserver" not in command_line(proc):
            workers.append(proc)
    return workers


def test_kill_9_during_classification_leaves_no_process_and_no_port(tmp_path):
    out = tmp_path / "out"
    run = Run(out, env=WORKERS)
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

    rerun = Run(out, env=WORKERS)
    try:
        assert rerun.finish(timeout_s=400) == 0, rerun.output[-3000:]
    finally:
        rerun.process.kill()
    assert "images:                    19" in rerun.output
    assert "Error logging to API" not in rerun.output  # logs were sent before the server stopped
    left = wait_until_gone(rerun.marker, timeout_s=5)
    assert not left, f"processes outlived a finished run:\n{describe(left)}"
    assert not marked_processes(run.marker)
