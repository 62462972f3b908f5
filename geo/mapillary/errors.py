"""Error classes of the Mapillary client and the redaction that keeps the token out of them.

Every message says what went wrong and what to do. No message, log line or file written by
``geo.mapillary`` may contain the access token: URLs pass through ``redact`` first, and
``RedactingFilter`` scrubs any token this process has resolved from log records.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, quote_plus

TOKEN_HELP = ("get a client token at https://www.mapillary.com/dashboard/developers and set MAPILLARY_ACCESS_TOKEN "
              "(or store it in a Prefect Secret block and pass its name as token_secret)")

_TOKEN_IN_QUERY = re.compile(r"(access_token=)[^&\s'\"]+", re.IGNORECASE)
_TOKEN_IN_HEADER = re.compile(r"(OAuth\s+)[^\s'\"]+")
_KNOWN_TOKENS: set[str] = set()
_KNOWN_LOCK = threading.Lock()


def remember_token(token: str) -> None:
    """Register a token value so that ``redact`` and ``RedactingFilter`` scrub it everywhere."""
    if token:
        with _KNOWN_LOCK:
            _KNOWN_TOKENS.update({token, quote(token, safe=""), quote_plus(token)})  # as sent in URLs, too


def redact(text: object) -> str:
    """``text`` as a string with ``access_token=...``, ``OAuth ...`` and every known token replaced by ``***``."""
    out = _TOKEN_IN_HEADER.sub(r"\1***", _TOKEN_IN_QUERY.sub(r"\1***", str(text)))
    with _KNOWN_LOCK:
        tokens = sorted(_KNOWN_TOKENS, key=len, reverse=True)
    for token in tokens:
        out = out.replace(token, "***")
    return out


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


class MapillaryError(RuntimeError):
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
