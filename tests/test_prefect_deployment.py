"""Integration: a real Prefect server, the served deployment, and `prefect deployment run --param bbox=...`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import geopandas as gpd
import pytest

from conftest import REPO
from flows.config import run_config

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout_s: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(1)
    pytest.fail(f"{what} not ready after {timeout_s} s\n{log.read_text()[-3000:]}")


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.read().strip() == b"true"
    except OSError:
        return False


@pytest.fixture(scope="module")
def served_deployment(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 plus `city-audit serve`; stopped in the right order."""
    home = tmp_path_factory.mktemp("prefect-home")
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    port = api.rsplit(":", 1)[1].split("/")[0]
    server_log, serve_log = home / "server.log", home / "serve.log"
    server = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                              env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT)
    serve = None
    try:
        _wait(lambda: _healthy(api), "prefect server", 180, server, server_log)
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], cwd=REPO, env=env,
                                 stdout=serve_log.open("w"), stderr=subprocess.STDOUT)
        inspect = [BIN / "prefect", "deployment", "inspect", "city-audit/local"]
        _wait(lambda: subprocess.run(inspect, env=env, capture_output=True).returncode == 0,
              "deployment city-audit/local", 120, serve, serve_log)
        yield env
    finally:
        for proc in (serve, server):  # serve first: a server killed first leaves serve hanging
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.mark.parametrize("bbox", ["9.16,48.76,9.18,48.78", "[9.16, 48.76, 9.18, 48.78]"], ids=["csv", "json-list"])
def test_deployment_run_with_bbox_param(served_deployment, tmp_path, bbox):
    out = tmp_path / "out"
    command = [BIN / "prefect", "deployment", "run", "city-audit/local", "--param", f"bbox={bbox}",
               "--param", 'model={"model": "tiny", "device": "cpu"}', "--param", f'outputs={{"out": "{out}"}}',
               "--watch", "--watch-interval", "2", "--watch-timeout", "400"]
    result = subprocess.run(command, env=served_deployment, capture_output=True, text=True, timeout=450)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Completed" in result.stdout
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["parameters"]["bbox"] == [9.16, 48.76, 9.18, 48.78]
    # the same configuration as `city-audit run --bbox ... --model tiny --device cpu --out ...` records
    assert manifest["parameters"] == run_config(bbox=bbox, model="tiny", device="cpu", out=str(out)).parameters()
    assert manifest["model_trained"] is False and manifest["counts"]["images"] == 19
    assert len(gpd.read_parquet(out / "segments.parquet")) == 190
    assert (out / "audit.duckdb").is_file()
