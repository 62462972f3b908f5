"""Async HTTP client for Mapillary API v4: rate limits per endpoint, retries, fail-fast on bad tokens.

Four endpoints, each with its own in-process limiter (requests per minute): ``search``
(Graph ``/images?bbox=``), ``entity`` (Graph ``/<id>``), ``tiles`` (vector tiles) and
``thumbs`` (the signed CDN thumbnail URLs). Limiters are shared by every client in the process
(Prefect runs mapped tasks in threads), so the configured rate holds for the whole run.

Retried: 429 (waiting ``Retry-After`` when given, and pausing that endpoint's limiter), 5xx,
Graph errors that are known to pass (code -2 "Timeout", code 4 and 17 rate limits), timeouts
and connection errors, with exponential backoff and full jitter. The API's ``is_transient``
flag is ignored: it has been seen ``false`` on errors that a retry cured. Error code 190
(invalid token) raises ``InvalidTokenError`` at once, whatever the HTTP status (also in a 200).
A Graph error object in an HTTP 200 answer is an error, never data. An answer that a caller's
``check`` finds unusable (an empty or undecodable tile, a body that is not the JSON expected) is
retried like a 5xx and then fails with the reason: a degraded answer never passes as a result.

Every attempt has a total deadline (``options.deadline``: connect, headers and the whole body),
not only httpx's idle timeout, so a server trickling one byte a second cannot stall the run;
bodies are read with a size cap (``max_body_mb``, after decoding ``Content-Encoding``). The
token goes in the ``Authorization`` header for the Graph API and in the query string only for
tiles, and every URL in a message is redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

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


class UnusableAnswer(Exception):
    """Raised by a ``check`` of ``MapillaryClient._send``: the answer came, but cannot be used (retried).

    ``kind`` becomes the kind of the error raised once the retries are spent (e.g. "tile undecodable").
    """

    def __init__(self, message: str, kind: str = "unusable answer") -> None:
        super().__init__(message)
        self.kind = kind


class BodyTooLarge(Exception):
    """The decoded body grew past ``max_body_mb``."""


@dataclass
class Answer:
    """A complete HTTP answer: status, headers, the decoded body and how many raw bytes came over the wire."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str  # as requested, query string included: redact before showing it
    raw_bytes: int  # bytes received before Content-Encoding was decoded

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _graph_error(answer: Answer) -> dict[str, Any]:
    """The Graph ``error`` object of a JSON body (any status), or {}."""
    head = answer.content[:64].lstrip()
    if not head.startswith(b"{"):
        return {}
    try:
        body = answer.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _code(value: Any) -> Any:
    """A Graph error code as an int when it reads as one (``"190"`` and ``190.0`` too), else as given."""
    if isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else value


def _graph_object(answer: Answer) -> dict[str, Any]:
    """The JSON object of a Graph answer; raises ``UnusableAnswer`` for anything else."""
    try:
        body = answer.json()
    except ValueError:
        raise UnusableAnswer(f"a body that is not JSON ({len(answer.content)} bytes, "
                             f"{answer.headers.get('Content-Type', 'no content type')})") from None
    if not isinstance(body, dict):
        raise UnusableAnswer(f"JSON that is not an object ({type(body).__name__})")
    return body


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

    async def graph(self, path: str, params: Mapping[str, Any],
                    check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """GET ``<graph root>/<path>`` with ``params`` and the token in the OAuth header; returns the JSON object.

        ``check(body)`` may raise ``UnusableAnswer`` (e.g. a search answer without a ``data``
        list): that answer is retried, then fails with the reason.
        """
        endpoint = "search" if path.strip("/") == "images" else "entity"
        headers = {"Authorization": f"OAuth {self._token.reveal()}"}

        def usable(answer: Answer) -> None:
            body = _graph_object(answer)
            if check is not None:
                check(body)

        answer = await self._send(endpoint, f"{self.graph_root}/{path.lstrip('/')}", params, headers, check=usable)
        return _graph_object(answer)

    async def tile(self, layer: str, z: int, x: int, y: int,
                   check: Callable[[bytes], None] | None = None) -> bytes:
        """Bytes of one coverage vector tile; empty for a tile without coverage (HTTP 204 or 404 only).

        An HTTP 200 with an empty body is not "no coverage" but an unusable answer (retried, then
        an error), and so is a body that ``check`` refuses (e.g. one that does not decode as MVT).
        """
        url = f"{self.tiles_root}/maps/vtp/{layer}/2/{z}/{x}/{y}"

        def usable(answer: Answer) -> None:
            if answer.status_code in (204, 404):
                return
            if not answer.content:
                raise UnusableAnswer(f"HTTP {answer.status_code} with an empty body (no coverage is HTTP 204 or 404)")
            if check is not None:
                check(answer.content)

        answer = await self._send("tiles", url, {"access_token": self._token.reveal()}, {}, missing_ok=True,
                                  check=usable)
        return b"" if answer.status_code in (204, 404) else answer.content

    async def thumbnail(self, url: str) -> Answer:
        """GET a signed thumbnail URL (no token sent). Raises ``ExpiredURLError`` on 403."""
        return await self._send("thumbs", url, {}, {})

    @property
    def deadline_s(self) -> float:
        return self.options.deadline

    async def _get(self, url: str, params: Mapping[str, Any], headers: Mapping[str, str]) -> Answer:
        """One GET, body included, decoded and capped at ``max_body_mb``."""
        assert self._http is not None
        cap = int(self.options.max_body_mb * 1024 * 1024)
        async with self._http.stream("GET", url, params=params or None, headers=headers) as response:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise BodyTooLarge(f"the body grew past max_body_mb={self.options.max_body_mb:g} MB "
                                       f"(decoded; a decompression bomb?)")
                chunks.append(chunk)
            return Answer(response.status_code, response.headers, b"".join(chunks), str(response.request.url),
                          response.num_bytes_downloaded)

    async def _send(self, endpoint: str, url: str, params: Mapping[str, Any], headers: Mapping[str, str],
                    missing_ok: bool = False, check: Callable[[Answer], None] | None = None) -> Answer:
        assert self._http is not None and self._slots is not None, "use MapillaryClient in 'async with'"
        options, limiter = self.options, self.limiters[endpoint]
        last, last_kind = "no attempt", None
        for attempt in range(options.max_retries + 1):
            if attempt:
                self.retries[endpoint] += 1
            try:
                async with self._slots:
                    await limiter.acquire()
                    self.requests[endpoint] += 1
                    answer = await asyncio.wait_for(self._get(url, params, headers), self.deadline_s)
            except asyncio.TimeoutError:
                last, last_kind = f"no complete answer within the deadline of {self.deadline_s:g} s", None
                await self._backoff(attempt)
                continue
            except BodyTooLarge as exc:  # the same body would come again: no retry
                raise MapillaryAPIError(f"{endpoint} request {redact(url)} refused: {exc}") from None
            except (httpx.TooManyRedirects, httpx.UnsupportedProtocol) as exc:  # the same would happen again
                raise MapillaryAPIError(f"{endpoint} request {redact(url)} failed: {type(exc).__name__}: "
                                        f"{redact(exc)}") from None
            except httpx.HTTPError as exc:  # timeouts, resets, bad encodings
                last, last_kind = f"{type(exc).__name__}: {redact(exc) or 'no detail'}", None
                await self._backoff(attempt)
                continue
            status = answer.status_code
            error = _graph_error(answer)
            code = _code(error.get("code"))
            shown = redact(answer.url)
            if code == INVALID_TOKEN_CODE:
                raise InvalidTokenError(f"Mapillary rejected the access token (error code 190: "
                                        f"{error.get('message', 'invalid token')}, HTTP {status}) on {shown}; "
                                        f"{TOKEN_HELP}")
            if (status < 400 or (missing_ok and status in (204, 404))) and not (error and status < 300):
                try:
                    if check is not None:
                        check(answer)
                except UnusableAnswer as exc:
                    last, last_kind = f"HTTP {status} with an unusable body: {exc}", exc.kind
                    await self._backoff(attempt)
                    continue
                return answer
            if status == 429 or status >= 500 or code in RETRYABLE_GRAPH_CODES:
                last_kind = None
                last = f"HTTP {status}" + (f" code {code}: {error.get('message')}" if code is not None else "")
                wait_s = retry_after_s(answer.headers.get("Retry-After"))
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
            detail = error.get("message") or answer.text[:200]
            raise MapillaryAPIError(f"{endpoint} request {shown} failed with HTTP {status}"
                                    f"{f' (code {code})' if code is not None else ''}: {detail}", status,
                                    code if isinstance(code, int) else None)
        raise MapillaryAPIError(f"{endpoint} request {redact(url)} still failing after {options.max_retries + 1} "
                                f"attempts (last: {last}); try again later or lower {endpoint}_rpm",
                                kind=last_kind)

    async def _backoff(self, attempt: int) -> None:
        """Sleep a random time in [0, min(max, base * 2**attempt)] (exponential backoff, full jitter)."""
        cap_s = min(self.options.backoff_max_s, self.options.backoff_base_s * (2 ** attempt))
        await asyncio.sleep(random.uniform(0, cap_s))
