"""Async HTTP client for Mapillary API v4: rate limits per endpoint, retries, fail-fast on bad tokens.

Four endpoints, each with its own in-process limiter (requests per minute): ``search``
(Graph ``/images?bbox=``), ``entity`` (Graph ``/<id>``), ``tiles`` (vector tiles) and
``thumbs`` (the signed CDN thumbnail URLs). Limiters are shared by every client in the process
(Prefect runs mapped tasks in threads), so the configured rate holds for the whole run.

Retried: 429 (waiting ``Retry-After`` when given, and pausing that endpoint's limiter), 5xx,
Graph errors that are known to pass (code -2 "Timeout", code 4 and 17 rate limits), timeouts
and connection errors, with exponential backoff and full jitter. The API's ``is_transient``
flag is ignored: it has been seen ``false`` on errors that a retry cured. Error code 190
(invalid token) raises ``InvalidTokenError`` at once. The token goes in the ``Authorization``
header for the Graph API and in the query string only for tiles, and every URL in a message is
redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import threading
import time
from typing import Any, Mapping

import httpx

from geo.mapillary.errors import (TOKEN_HELP, ExpiredURLError, InvalidTokenError, MapillaryAPIError,
                                  install_log_redaction, redact)
from geo.mapillary.options import AccessToken, MapillaryOptions, graph_url, tiles_url

ENDPOINTS = ("search", "entity", "tiles", "thumbs")
RETRYABLE_GRAPH_CODES = {-2, 1, 2, 4, 17, 32, 613}  # timeout, unknown, service, app/user/page rate limits
INVALID_TOKEN_CODE = 190


class RateLimiter:
    """A thread-safe token bucket (GCRA form) allowing ``per_minute`` requests, bursts of ``burst``.

    ``acquire`` reserves the next free slot and sleeps until it; it works from any thread and
    any event loop. ``pause(seconds)`` holds every caller back, e.g. after a 429.
    """

    def __init__(self, per_minute: float, burst: int = 1) -> None:
        self.interval_s = 60.0 / per_minute
        self.burst = max(1, burst)
        self._next_s = 0.0  # theoretical arrival time of the next request
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Reserve one slot; returns how many seconds the caller must wait before using it."""
        with self._lock:
            now = time.monotonic()
            start = max(self._next_s, now - (self.burst - 1) * self.interval_s)
            self._next_s = start + self.interval_s
            return max(0.0, start - now)

    async def acquire(self) -> None:
        """Wait (asynchronously) for one slot."""
        wait_s = self.reserve()
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    def pause(self, seconds: float) -> None:
        """No slot is handed out earlier than ``seconds`` from now."""
        with self._lock:
            self._next_s = max(self._next_s, time.monotonic() + seconds)


_LIMITERS: dict[tuple[str, str, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(endpoint: str, root: str, per_minute: float) -> RateLimiter:
    """The process-wide limiter of one endpoint at one root URL and rate."""
    key = (endpoint, root, float(per_minute))
    with _LIMITERS_LOCK:
        if key not in _LIMITERS:
            _LIMITERS[key] = RateLimiter(per_minute)
        return _LIMITERS[key]


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _graph_error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


class MapillaryClient:
    """One async HTTP session against the Mapillary endpoints; use as ``async with MapillaryClient(...)``."""

    def __init__(self, token: AccessToken, options: MapillaryOptions | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.options = options or MapillaryOptions()
        self._transport = transport  # None: the network; benchmarks pass an in-process one
        self._token = token
        self.graph_root, self.tiles_root = graph_url(), tiles_url()
        rates = {"search": self.options.search_rpm, "entity": self.options.entity_rpm,
                 "tiles": self.options.tiles_rpm, "thumbs": self.options.thumbs_rpm}
        roots = {"search": self.graph_root, "entity": self.graph_root, "tiles": self.tiles_root, "thumbs": "cdn"}
        self.limiters = {name: limiter_for(name, roots[name], rates[name]) for name in ENDPOINTS}
        self.requests = dict.fromkeys(ENDPOINTS, 0)  # sent, retries included
        self.retries = dict.fromkeys(ENDPOINTS, 0)
        self._http: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        install_log_redaction()

    async def __aenter__(self) -> MapillaryClient:
        limits = httpx.Limits(max_connections=self.options.concurrency, max_keepalive_connections=self.options.concurrency)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.options.timeout_s), limits=limits,
                                       follow_redirects=True, headers={"User-Agent": "city-audit"},
                                       transport=self._transport)
        self._slots = asyncio.Semaphore(self.options.concurrency)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None

    async def graph(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """GET ``<graph root>/<path>`` with ``params`` and the token in the OAuth header; returns the JSON body."""
        endpoint = "search" if path.strip("/") == "images" else "entity"
        headers = {"Authorization": f"OAuth {self._token.reveal()}"}
        response = await self._send(endpoint, f"{self.graph_root}/{path.lstrip('/')}", params, headers)
        try:
            body = response.json()
        except ValueError:
            raise MapillaryAPIError(f"{endpoint} request {redact(response.request.url)} returned a body that is not "
                                    f"JSON (HTTP {response.status_code}); check MAPILLARY_GRAPH_URL") from None
        if not isinstance(body, dict):
            raise MapillaryAPIError(f"{endpoint} request {redact(response.request.url)} returned JSON that is not an object")
        return body

    async def tile(self, layer: str, z: int, x: int, y: int) -> bytes:
        """Bytes of one coverage vector tile (empty for a tile without coverage, HTTP 204/404)."""
        url = f"{self.tiles_root}/maps/vtp/{layer}/2/{z}/{x}/{y}"
        response = await self._send("tiles", url, {"access_token": self._token.reveal()}, {}, missing_ok=True)
        return b"" if response.status_code in (204, 404) else response.content

    async def thumbnail(self, url: str) -> httpx.Response:
        """GET a signed thumbnail URL (no token sent). Raises ``ExpiredURLError`` on 403."""
        return await self._send("thumbs", url, {}, {})

    async def _send(self, endpoint: str, url: str, params: Mapping[str, Any], headers: Mapping[str, str],
                    missing_ok: bool = False) -> httpx.Response:
        assert self._http is not None and self._slots is not None, "use MapillaryClient in 'async with'"
        options, limiter = self.options, self.limiters[endpoint]
        last = "no attempt"
        for attempt in range(options.max_retries + 1):
            if attempt:
                self.retries[endpoint] += 1
            try:
                async with self._slots:
                    await limiter.acquire()
                    self.requests[endpoint] += 1
                    response = await self._http.get(url, params=params or None, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {redact(exc) or 'no detail'}"
                await self._backoff(attempt)
                continue
            status = response.status_code
            if status < 400 or (missing_ok and status in (204, 404)):
                return response
            error = _graph_error(response)
            code = error.get("code")
            shown = redact(response.request.url)
            if code == INVALID_TOKEN_CODE:
                raise InvalidTokenError(f"Mapillary rejected the access token (error code 190: "
                                        f"{error.get('message', 'invalid token')}) on {shown}; {TOKEN_HELP}")
            if status == 429 or status >= 500 or code in RETRYABLE_GRAPH_CODES:
                last = f"HTTP {status}" + (f" code {code}: {error.get('message')}" if code is not None else "")
                wait_s = retry_after_s(response.headers.get("Retry-After"))
                if wait_s is not None:
                    if wait_s > options.max_retry_after_s:
                        raise MapillaryAPIError(f"{endpoint} endpoint asked to wait {wait_s:.0f} s (Retry-After) on "
                                                f"{shown}, more than max_retry_after_s={options.max_retry_after_s:g}; "
                                                f"lower {endpoint}_rpm or try again later", status, code)
                    limiter.pause(wait_s)
                    await asyncio.sleep(wait_s)
                else:
                    await self._backoff(attempt)
                continue
            if endpoint == "thumbs" and status in (403, 410):
                raise ExpiredURLError(f"thumbnail URL refused with HTTP {status} (signed URL expired?)", status)
            detail = error.get("message") or response.text[:200]
            raise MapillaryAPIError(f"{endpoint} request {shown} failed with HTTP {status}"
                                    f"{f' (code {code})' if code is not None else ''}: {detail}", status, code)
        raise MapillaryAPIError(f"{endpoint} request {redact(url)} still failing after {options.max_retries + 1} "
                                f"attempts (last: {last}); try again later or lower {endpoint}_rpm")

    async def _backoff(self, attempt: int) -> None:
        """Sleep a random time in [0, min(max, base * 2**attempt)] (exponential backoff, full jitter)."""
        cap_s = min(self.options.backoff_max_s, self.options.backoff_base_s * (2 ** attempt))
        await asyncio.sleep(random.uniform(0, cap_s))
