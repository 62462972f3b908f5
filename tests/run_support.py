"""Real ``city-audit run`` processes for the kill tests: start one, watch its output and its process
tree, kill it with SIGKILL, and find every process it left (by a marker in their environment)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SAMPLE_BBOX = "9.16,48.76,9.18,48.78"
MARKER_ENV = "CITY_AUDIT_TEST_MARKER"


class Run:
    """One ``city-audit run --source sample --model tiny`` subprocess (``source``: other source options);
    its output is read in a thread."""

    def __init__(self, out: Path, env: dict | None = None, source: list[str] | None = None):
        self.marker = uuid.uuid4().hex
        environment = {**os.environ, "PYTHONPATH": str(REPO), MARKER_ENV: self.marker, "PYTHONUNBUFFERED": "1",
                       **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--bbox", SAMPLE_BBOX, *(source or ["--source", "sample"]),
             "--model", "tiny", "--out", str(out)],
            cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, timeout_s: float, what: str) -> None:
        """Poll ``condition()`` until true; fail with the run's output if the run ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.process.returncode}) before {what}:\n"
                                     f"{self.output[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout_s} s:\n{self.output[-3000:]}")

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def listening_ports(self) -> set[int]:
        """TCP ports that the run or its descendants listen on."""
        ports = set()
        for proc in [psutil.Process(self.process.pid), *self.descendants()]:
            try:
                ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                pass
        return ports

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def finish(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code


def command_line(proc: psutil.Process) -> str:
    """The process's command line, or '' for one that is gone or a zombie."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``marker`` (orphans re-parented to init included)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER_ENV) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def wait_until_gone(marker: str, timeout_s: float) -> list[psutil.Process]:
    """The marked processes still alive after ``timeout_s`` (empty when all went in time)."""
    deadline = time.monotonic() + timeout_s
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(marker)
    return left


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def describe(processes: list[psutil.Process]) -> str:
    rows = []
    for proc in processes:
        try:
            rows.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            rows.append(f"{proc.pid} (gone)")
    return "\n".join(rows)
