"""The Prefect API server a run talks to: the one the user configured, or one the run owns.

``prefect_api()`` is entered before the flow's heavy imports, so a server of our own starts while
torch and open_clip load:

- ``PREFECT_API_URL`` set (in the environment or the active Prefect profile): that server is used
  and never replaced; it must answer ``/health`` within the start-up deadline.
- otherwise the run starts ``uvicorn prefect.server.api.server:create_app`` as its own child on a
  free local port, sets ``PREFECT_API_URL`` to it, waits for ``/api/health`` and stops the server
  when the block ends. On Linux the child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so even ``kill -9`` of
  the run takes the server with it; ``CITY_AUDIT_RUN_PID`` in its environment names the run.

The deadline is ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (``flows/__init__`` sets 180 s:
the server needs 4-5 s on an idle 2-core machine, 12-13 s when it first migrates Prefect's database
(``~/.prefect/prefect.db``, kept for later runs), and 15-40 s on a busy one); a server of our own that misses
it is stopped and started once more. Failing twice, or a configured server that does not answer, is
a ``PrefectStartError``: one line saying what to do. Nothing here imports Prefect (2-3 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Iterator

from contracts.errors import CityAuditError

DEADLINE_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Set in the environment of every process a run starts (the API server), with the run's pid.
RUN_MARKER_ENV = "CITY_AUDIT_RUN_PID"
POLL_S = 0.1
_OWNED_URLS: set[str] = set()  # API URLs of servers this process started (and stops)
STOP_GRACE_S = 5.0


class PrefectStartError(CityAuditError):
    """The Prefect API server the run needs did not answer in time (twice, for a server of our own)."""


def deadline_s() -> float:
    """The start-up deadline in seconds (``$PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, default 180)."""
    raw = os.environ.get(DEADLINE_ENV, "180")
    try:
        value = float(raw)
    except ValueError:
        raise PrefectStartError(f"{DEADLINE_ENV}={raw!r} is not a number of seconds; unset it for the default "
                                "(180)") from None
    if value <= 0:
        raise PrefectStartError(f"{DEADLINE_ENV}={raw!r} must be positive; unset it for the default (180)")
    return value


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment, else from Prefect's current settings if Prefect is already
    imported in this process (a test harness, a notebook), else from the active Prefect profile, else None."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return url
    if "prefect.settings" in sys.modules:  # already paid for: ask Prefect itself
        from prefect.settings import PREFECT_API_URL

        url = (PREFECT_API_URL.value() or "").strip()
        # Prefect read the environment at import: a server an earlier run of this process owned is gone
        return url if url and url not in _OWNED_URLS else None
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    if not profiles.is_file():
        return None
    import tomllib

    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None  # Prefect itself will complain about a broken profiles file
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    url = str(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL", "")).strip()
    return url or None


def answers(url: str, timeout_s: float = 2.0) -> int | None:
    """The HTTP status of ``GET url`` (any status, 4xx and 5xx too), or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our own or the user's API
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for_health(api_url: str, deadline: float, process: subprocess.Popen | None = None) -> bool:
    """Poll ``api_url/health`` until it answers 200 (any answer below 500 for a server we do not own,
    such as Prefect Cloud, which wants a key) or ``deadline`` (``time.monotonic()``) passes, or
    ``process`` (our server) exits. True when it answered."""
    health = api_url.rstrip("/") + "/health"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        status = answers(health, timeout_s=max(0.5, min(5.0, deadline - time.monotonic())))
        if status == 200 or (process is None and status is not None and status < 500):
            return True
        time.sleep(POLL_S)
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent(parent_pid: int) -> None:
    """``preexec_fn`` of the server: SIGKILL when the run dies (Linux), exit if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


class OwnedServer:
    """A Prefect API server started by this run as its child process, on ``port`` of 127.0.0.1."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile(prefix="city-audit-prefect-server-")
        self.started_at = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Launch the server (returns at once; ``wait`` waits for it)."""
        prefect_dir = Path(find_spec("prefect").origin).parent  # the package, without importing it
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", RUN_MARKER_ENV: str(os.getpid())}
        env.pop("PREFECT_API_URL", None)
        parent = os.getpid()
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: _die_with_parent(parent),  # noqa: PLW1509 - no threads run yet at this point
        )

    def wait(self, deadline_after_s: float) -> bool:
        """True when the server answers within ``deadline_after_s`` of its start."""
        return wait_for_health(self.api_url, self.started_at + deadline_after_s, self.process)

    def last_line(self) -> str:
        """The server's last line of output (for an error message), or ''."""
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the process."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()


class ApiServer:
    """The server of one run: ``api_url``, and ``ready()`` to wait for it (started by ``prefect_api``)."""

    def __init__(self, configured: str | None):
        self.configured = configured
        self.owned: OwnedServer | None = None
        self.deadline_s = deadline_s()
        self.ready_s: float | None = None  # seconds from start to the first healthy answer
        self._previous_url: str | None = None

    @property
    def api_url(self) -> str:
        return self.configured if self.configured else self.owned.api_url

    def start(self) -> None:
        if self.configured is None:
            self._previous_url = os.environ.get("PREFECT_API_URL")
            self.owned = OwnedServer()
            self.owned.start()
            _OWNED_URLS.add(self.owned.api_url)
            os.environ["PREFECT_API_URL"] = self.owned.api_url  # before Prefect is imported: its settings read it

    def ready(self) -> str:
        """Wait until the server answers and return its API URL; one retry for a server of our own."""
        if self.configured is not None:
            start = time.monotonic()
            if not wait_for_health(self.configured, start + self.deadline_s):
                raise PrefectStartError(
                    f"the Prefect server at PREFECT_API_URL={self.configured} did not answer within "
                    f"{self.deadline_s:g} s; start it (`prefect server start`) or unset PREFECT_API_URL to let "
                    "city-audit start its own")
            self.ready_s = time.monotonic() - start
            return self.configured
        for attempt in (1, 2):
            if self.owned.wait(self.deadline_s):
                self.ready_s = time.monotonic() - self.owned.started_at
                return self.owned.api_url
            why = self.owned.last_line()
            self.owned.stop()
            if attempt == 1:
                self.owned = OwnedServer()  # a fresh port: the old one may be what failed
                self.owned.start()
                _OWNED_URLS.add(self.owned.api_url)
                os.environ["PREFECT_API_URL"] = self.owned.api_url
        raise PrefectStartError(
            f"Prefect's temporary server did not start within {self.deadline_s:g} s, twice"
            f"{f' (last output: {why})' if why else ' (is the machine very busy?)'}; start one with "
            f"`prefect server start` and set PREFECT_API_URL, or raise {DEADLINE_ENV}")

    def stop(self) -> None:
        if self.owned is not None:
            flush_prefect()
            self.owned.stop()
            self.owned = None
            if self._previous_url is None:  # a later run in this process must not take ours for the user's
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = self._previous_url


def flush_prefect(timeout_s: float = 10.0) -> None:
    """Send what Prefect still queues (logs, events) while our server still runs: once it is stopped
    the senders retry a missing server for minutes at exit and print "Error logging to API"."""
    if "prefect" not in sys.modules:
        return
    from prefect._internal.concurrency.services import _active_services  # no public "drain everything"

    for service_type in {type(service) for service in list(_active_services)}:
        try:
            service_type.drain_all(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a log line that cannot be sent must not fail a finished run
            pass


@contextmanager
def prefect_api() -> Iterator[ApiServer]:
    """The run's Prefect API: the configured one, or a server of our own started now and stopped at the
    end of the block (also after an error). Call ``ready()`` before the flow starts."""
    server = ApiServer(configured_api_url())
    server.start()
    try:
        yield server
    finally:
        server.stop()
