"""Error classes of the Mapillary client and the redaction that keeps the token out of them.

Every message says what went wrong and what to do. No message, log line or file written by
``geo.mapillary`` may contain the access token: URLs pass through ``redact`` first, and
``RedactingFilter`` scrubs any token this process has resolved from log records.
"""

from __future__ import annotations

import logging
import re
import threading

from contracts.errors import CityAuditError

TOKEN_HELP = ("get a client token at https://www.mapillary.com/dashboard/developers and set MAPILLARY_ACCESS_TOKEN "
              "(or store it in a Prefect Secret block and pass its name as token_secret)")

_TOKEN_IN_QUERY = re.compile(r"(access_token(?:=|%3D|%253D))[^&\s'\"<>]+", re.IGNORECASE)
_TOKEN_IN_HEADER = re.compile(r"((?:OAuth|Bearer)(?:\s|%20|\+)+)[^\s'\"<>]+", re.IGNORECASE)
#: One character as it may be written: %XX (either case, also %25XX), \uXXXX, \xXX, \/, &#NN; or &#xXX;, or itself.
_ENCODED_CHAR = re.compile(r"%25[0-9A-Fa-f]{2}|%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\x[0-9A-Fa-f]{2}|\\/|&#[xX][0-9A-Fa-f]+;"
                           r"|&#[0-9]+;|.", re.DOTALL)
MIN_SECRET_RUN = 8  # this many consecutive characters of a token's secret are redacted wherever they appear
_KNOWN_TOKENS: set[str] = set()
_KNOWN_LOCK = threading.Lock()


def remember_token(token: str) -> None:
    """Register a token value so that ``redact`` and ``RedactingFilter`` scrub it everywhere, in any encoding."""
    if token:
        with _KNOWN_LOCK:
            _KNOWN_TOKENS.add(token)


def _needles(token: str) -> tuple[list[str], str]:
    """(whole strings to remove, the secret whose runs of ``MIN_SECRET_RUN`` characters are removed)."""
    parts = token.split("|")
    if len(parts) >= 3 and parts[-1]:  # MLY|<app id>|<secret>
        prefix = "|".join(parts[:-1])
        return [token, prefix], parts[-1]
    return [token], token


def _decode_char(unit: str) -> str:
    if len(unit) == 1:
        return unit
    if unit.startswith("%25"):
        return chr(int(unit[3:], 16))
    if unit.startswith("%"):
        return chr(int(unit[1:], 16))
    if unit.startswith(("\\u", "\\x")):
        return chr(int(unit[2:], 16))
    if unit == "\\/":
        return "/"
    if unit.lower().startswith("&#x"):
        return chr(int(unit[3:-1], 16))
    return chr(int(unit[2:-1]))


def _spans(text: str, tokens: list[str]) -> list[tuple[int, int]]:
    """Spans of ``text`` that spell, in any mix of encodings, a token, its app-id prefix or 8+ secret characters."""
    units = [(m.start(), m.end(), _decode_char(m.group())) for m in _ENCODED_CHAR.finditer(text)]
    decoded = "".join(u[2] for u in units)
    hits = []
    for token in tokens:
        whole, secret = _needles(token)
        for needle in whole:
            start = decoded.find(needle)
            while start != -1:
                hits.append((start, start + len(needle)))
                start = decoded.find(needle, start + 1)
        run = min(MIN_SECRET_RUN, len(secret))
        windows = {secret[i:i + run] for i in range(len(secret) - run + 1)}
        i = 0
        while i + run <= len(decoded):
            if decoded[i:i + run] in windows:
                end = i + run
                while end < len(decoded) and decoded[i:end + 1] in secret:  # as long as it stays a run of it
                    end += 1
                hits.append((i, end))
                i = end
            else:
                i += 1
    return [(units[a][0], units[b - 1][1]) for a, b in hits if b > a]


def redact(text: object) -> str:
    """``text`` as a string with ``access_token=...``, ``OAuth ...`` and every known token replaced by ``***``.

    A known token is found in any encoding (percent-encoding in either case, also doubled;
    JSON ``\\uXXXX`` and ``\\/`` escapes; HTML character references) and when cut short: its
    app-id prefix (``MLY|<app id>``) and any run of 8 or more consecutive characters of its
    secret are removed too.
    """
    out = _TOKEN_IN_HEADER.sub(r"\1***", _TOKEN_IN_QUERY.sub(r"\1***", str(text)))
    with _KNOWN_LOCK:
        tokens = sorted(_KNOWN_TOKENS, key=len, reverse=True)
    if not tokens:
        return out
    spans = sorted(_spans(out, tokens))
    if not spans:
        return out
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, last = [], 0
    for start, end in merged:
        pieces.append(out[last:start])
        pieces.append("***")
        last = end
    pieces.append(out[last:])
    return "".join(pieces)


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites a record's message with ``redact`` (attach to loggers or handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API name
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Attach ``RedactingFilter`` to the HTTP libraries' loggers (httpx logs every request URL at INFO)."""
    for name in ("httpx", "httpcore", "geo.mapillary"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


class MapillaryError(CityAuditError, RuntimeError):
    """Base class; messages are redacted on construction. ``kind`` is the short reason of a failure row."""

    kind = "error"

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(redact(message))
        if kind:
            self.kind = kind


class MissingTokenError(MapillaryError):
    """No access token was configured."""

    kind = "missing token"


class InvalidTokenError(MapillaryError):
    """Mapillary rejected the token (error code 190): retrying cannot help."""

    kind = "invalid token"


class MapillaryAPIError(MapillaryError):
    """A request that failed for good: a non-retryable error, or retries exhausted."""

    kind = "request failed"

    def __init__(self, message: str, status: int | None = None, code: int | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message, kind)
        self.status, self.code = status, code


class ExpiredURLError(MapillaryAPIError):
    """A signed thumbnail URL was refused (403): fetch a fresh one from the entity endpoint."""

    kind = "url expired"


class CorruptImageError(MapillaryError):
    """Downloaded bytes that are truncated or do not decode as an image."""

    kind = "corrupt image"


class OptionsError(MapillaryError, ValueError):
    """Invalid Mapillary options (unknown key, bad value)."""

    kind = "bad options"


def describe(exc: BaseException) -> str:
    """The reason of a failure row: ``"<kind>: <message>"``, redacted (``reason_kind`` reads the kind back)."""
    if isinstance(exc, MapillaryError):
        return redact(f"{exc.kind}: {exc}")
    return redact(f"error: {type(exc).__name__}: {exc}")


def reason_kind(reason: str) -> str:
    """The short kind at the start of a failure reason written by ``describe`` (e.g. ``"no geometry"``)."""
    return str(reason).split(":", 1)[0].strip() or "error"
