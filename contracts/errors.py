"""The root of every error a user can cause or fix.

Each package's errors derive from ``CityAuditError``; the command line catches it once, prints
its message on one line and exits with code 2 (``--debug`` shows the traceback). Anything
else that escapes is a bug in city-audit.
"""

from __future__ import annotations


class CityAuditError(Exception):
    """Something the user can fix: bad input, a bad file, a missing token, unreachable weights.

    The message says what is wrong, where, and what to do.
    """


class ConfigError(CityAuditError, ValueError):
    """A run parameter with a bad value; ``field`` names it as the command line spells it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
