"""Options of the Mapillary source, the endpoints and the access token.

``MapillaryOptions`` holds everything a user may tune (filters, thumbnail size, rate limits,
retries). It never holds the token: the token is resolved where it is used, from
``MAPILLARY_ACCESS_TOKEN`` or a Prefect Secret block, so it cannot reach Prefect parameters,
task inputs, cache keys or ``run.json``. Endpoints come from ``MAPILLARY_GRAPH_URL`` and
``MAPILLARY_TILES_URL`` (defaults: the public Mapillary hosts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping

from contracts.notices import MAPILLARY_ATTRIBUTION
from geo.mapillary.errors import TOKEN_HELP, MissingTokenError, OptionsError, remember_token

GRAPH_URL = "https://graph.mapillary.com"
TILES_URL = "https://tiles.mapillary.com"
TOKEN_ENV = "MAPILLARY_ACCESS_TOKEN"
ATTRIBUTION = MAPILLARY_ATTRIBUTION
THUMB_SIZES = (256, 1024, 2048, "original")
PANORAMAS = ("yes", "no", "only")
DISCOVERY = ("tiles", "search")
COVERAGE_LAYERS = ("mly1_public", "mly1_computed_public")


@dataclass(frozen=True)
class MapillaryOptions:
    """What to fetch and how fast. All fields have defaults; see docs/mapillary.md."""

    discovery: str = "tiles"  # "tiles": z14 coverage vector tiles; "search": Graph API images?bbox=
    coverage: str = "mly1_public"  # vector-tile set for discovery="tiles"
    captured_after: str | None = None  # ISO date or datetime, inclusive
    captured_before: str | None = None  # ISO date or datetime, exclusive
    panoramas: str = "yes"  # "yes" keep them, "no" drop them, "only" keep nothing else
    organization_id: str | None = None
    max_images: int | None = None
    min_spacing_m: float = 0.0  # thinning: at most one image per this many metres along a sequence; 0 keeps all
    thumb_size: int | str = 1024
    search_tile_deg: float = 0.005  # side of Graph search boxes; the API refuses boxes of 0.01 degree and more
    search_limit: int = 1000  # per search box; a box that returns this many is split in four
    min_search_tile_deg: float = 0.0005  # stop splitting below this side (and record that the box may be incomplete)
    concurrency: int = 16  # requests in flight per tile task
    timeout_s: float = 30.0  # idle timeout: connect, and each read of the body
    deadline_s: float | None = None  # total time for one attempt, body included; None: 4 x timeout_s
    max_body_mb: float = 64.0  # largest decoded answer accepted (a decompression bomb is refused)
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 600.0  # a longer Retry-After is an error instead of a silent wait
    download_attempts: int = 3  # per image, for truncated or corrupt files and expired URLs
    search_rpm: float = 8000.0  # requests per minute, per endpoint, for this process
    entity_rpm: float = 48000.0
    tiles_rpm: float = 30.0  # tiles are reportedly capped at 50,000 per day
    thumbs_rpm: float = 6000.0
    token_secret: str | None = None  # name of a Prefect Secret block holding the token

    def __post_init__(self) -> None:
        if self.discovery not in DISCOVERY:
            raise OptionsError(f"discovery must be one of {DISCOVERY}, got {self.discovery!r}")
        if self.coverage not in COVERAGE_LAYERS:
            raise OptionsError(f"coverage must be one of {COVERAGE_LAYERS}, got {self.coverage!r}")
        if self.panoramas not in PANORAMAS:
            raise OptionsError(f"panoramas must be one of {PANORAMAS}, got {self.panoramas!r}")
        if self.thumb_size not in THUMB_SIZES:
            raise OptionsError(f"thumb_size must be one of {THUMB_SIZES}, got {self.thumb_size!r}")
        if not 0 < self.search_tile_deg < 0.01:
            raise OptionsError(f"search_tile_deg must be in (0, 0.01): the API refuses boxes of 0.01 degree; got {self.search_tile_deg}")
        for name in ("search_rpm", "entity_rpm", "tiles_rpm", "thumbs_rpm", "timeout_s", "concurrency", "search_limit",
                     "max_body_mb"):
            if not getattr(self, name) > 0:
                raise OptionsError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise OptionsError(f"deadline_s must be positive (or None for 4 x timeout_s), got {self.deadline_s!r}")
        if self.max_images is not None and self.max_images < 1:
            raise OptionsError(f"max_images must be at least 1, got {self.max_images}")
        if self.min_spacing_m < 0:
            raise OptionsError(f"min_spacing_m must be >= 0, got {self.min_spacing_m}")
        for name in ("captured_after", "captured_before"):
            if getattr(self, name) is not None:
                parse_time(getattr(self, name), name)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | MapillaryOptions | None) -> MapillaryOptions:
        """Options from a dict (e.g. the flow parameter ``mapillary``); strings are converted to the field types."""
        if isinstance(values, MapillaryOptions):
            return values
        values = dict(values or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise OptionsError(f"unknown Mapillary option(s) {unknown}; valid options: {', '.join(known)}")
        converted = {}
        for name, value in values.items():
            if isinstance(value, str):
                value = _convert(name, value, known[name].default)
            converted[name] = value
        return cls(**converted)

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (JSON-serialisable; contains no secret)."""
        return dataclasses.asdict(self)

    @property
    def deadline(self) -> float:
        """Seconds one request attempt may take in total (connect, headers, whole body)."""
        return self.deadline_s if self.deadline_s is not None else 4 * self.timeout_s

    @property
    def thumb_field(self) -> str:
        """The Graph field holding the thumbnail URL for ``thumb_size`` (e.g. ``thumb_1024_url``)."""
        return f"thumb_{self.thumb_size}_url"

    def query_key(self, *parts: object) -> str:
        """A short stable hash of the discovery-relevant options, the endpoints and ``parts`` (for caches)."""
        relevant = {k: v for k, v in self.as_dict().items()
                    if k in ("discovery", "coverage", "captured_after", "captured_before", "panoramas",
                             "organization_id", "search_tile_deg", "search_limit", "min_search_tile_deg")}
        payload = json.dumps([relevant, graph_url(), tiles_url(), [str(p) for p in parts]], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


_INT_FIELDS = ("max_images", "search_limit", "concurrency", "max_retries", "download_attempts")


def _convert(name: str, value: str, default: object) -> object:
    """A string option value (from the command line) converted to the field's type."""
    if value.lower() in ("none", "null", ""):
        return None
    if name == "thumb_size":
        return value if value == "original" else _number(name, value, int)
    if name in _INT_FIELDS:
        return _number(name, value, int)
    if isinstance(default, float) or name == "deadline_s":
        return _number(name, value, float)
    return value


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """Command-line ``["key=value", ...]`` as a dict; raises ``OptionsError`` on an item without ``=``."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionsError(f"Mapillary option {pair!r} is not KEY=VALUE (e.g. min_spacing_m=5)")
        options[key.strip()] = value.strip()
    return options


def _number(name: str, value: str, kind: type) -> float | int:
    try:
        return kind(value)
    except ValueError:
        raise OptionsError(f"Mapillary option {name}={value!r} is not a {kind.__name__}") from None


def parse_time(value: str | datetime, what: str = "time") -> datetime:
    """An ISO date or datetime string as an aware UTC datetime (naive input is taken as UTC)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise OptionsError(f"{what} {value!r} is not an ISO date such as 2024-05-01 or 2024-05-01T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def graph_url() -> str:
    """The Graph API root: ``$MAPILLARY_GRAPH_URL`` or https://graph.mapillary.com."""
    return os.environ.get("MAPILLARY_GRAPH_URL", GRAPH_URL).rstrip("/")


def tiles_url() -> str:
    """The vector-tile root: ``$MAPILLARY_TILES_URL`` or https://tiles.mapillary.com."""
    return os.environ.get("MAPILLARY_TILES_URL", TILES_URL).rstrip("/")


class AccessToken:
    """The token, wrapped so that ``repr``, ``str`` and pickling never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value.strip()
        remember_token(self._value)

    def reveal(self) -> str:
        """The raw token, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "AccessToken('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("AccessToken cannot be pickled: resolve the token where it is used")


def resolve_token(token_secret: str | None = None) -> AccessToken:
    """The access token from the Prefect Secret block ``token_secret`` or, without one, ``$MAPILLARY_ACCESS_TOKEN``.

    Raises ``MissingTokenError`` saying how to get and set a token.
    """
    if token_secret:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(token_secret, _sync=True).get()  # sync even when called inside an event loop
        except Exception as exc:  # noqa: BLE001 - any failure to load the block means: no token
            raise MissingTokenError(f"could not load the Prefect Secret block {token_secret!r} "
                                    f"({type(exc).__name__}); create it or {TOKEN_HELP}") from None
        if not isinstance(value, str) or not value.strip():
            raise MissingTokenError(f"Prefect Secret block {token_secret!r} holds no token string; {TOKEN_HELP}")
        return AccessToken(value)
    value = os.environ.get(TOKEN_ENV, "")
    if not value.strip():
        raise MissingTokenError(f"no Mapillary access token: {TOKEN_ENV} is not set; {TOKEN_HELP}")
    return AccessToken(value)
