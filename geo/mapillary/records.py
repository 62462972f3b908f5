"""Turn Mapillary answers (Graph entities, search results, vector-tile features) into image records.

A record is a plain dict with the ``images`` contract names (``image_id``, ``sequence_id``,
``captured_at``, ``compass_angle``, ``is_pano``, ``camera_type``, ``lon``, ``lat``, ``width``,
``height``) plus ``organization_id`` and ``creator_id``. Every field except ``image_id`` is
optional: a missing or malformed value becomes ``None`` instead of an exception. Positions
prefer the SfM-computed geometry and fall back to the raw GPS one; ``position_problem`` says
why an answer has no usable position ("no geometry", "coordinates out of range"), so that
discovery records it as a failure instead of dropping it.

Numeric ``captured_at`` values are read by magnitude (the API sends epoch milliseconds, other
tools seconds or microseconds): ``|n| < 1e11`` is seconds (1e11 s is the year 5138, while 1e11
ms is March 1973, earlier than any street-level image), ``< 1e14`` milliseconds, ``< 1e17``
microseconds, anything larger nanoseconds. ISO strings are read as such (naive means UTC).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

#: Fields asked of the Graph API for search results and entities (only ``id`` comes by default).
SEARCH_FIELDS = ("id", "geometry", "computed_geometry", "captured_at", "compass_angle", "computed_compass_angle",
                 "sequence", "is_pano", "camera_type", "creator")
ENTITY_FIELDS = (*SEARCH_FIELDS, "width", "height")
RECORD_COLUMNS = ("image_id", "sequence_id", "captured_at", "compass_angle", "is_pano", "camera_type",
                  "organization_id", "creator_id", "lon", "lat", "width", "height")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    text = str(value).strip()
    return text or None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


#: Upper bounds (exclusive, on the absolute value) of epoch seconds, milliseconds and microseconds.
SECONDS_BELOW, MILLISECONDS_BELOW, MICROSECONDS_BELOW = 1e11, 1e14, 1e17


def epoch_seconds(number: float) -> float:
    """An epoch number in seconds, milliseconds, microseconds or nanoseconds as seconds, decided by magnitude."""
    size = abs(number)
    if size < SECONDS_BELOW:
        return number
    if size < MILLISECONDS_BELOW:
        return number / 1e3
    if size < MICROSECONDS_BELOW:
        return number / 1e6
    return number / 1e9


def captured_at_utc(value: Any) -> datetime | None:
    """A ``captured_at`` (epoch seconds/ms/µs/ns by magnitude, or an ISO string) as an aware UTC datetime, or None."""
    number = _number(value)  # numeric strings too
    if number is not None:
        try:
            return datetime.fromtimestamp(epoch_seconds(number), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value.strip():
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return None


def _point(geometry: Any) -> tuple[float, float] | None:
    if not isinstance(geometry, Mapping):
        return None
    coords = geometry.get("coordinates")
    if not isinstance(coords, (list, tuple)) or len(coords) < 2:
        return None
    lon, lat = _number(coords[0]), _number(coords[1])
    if lon is None or lat is None or not (-180 <= lon <= 180 and -90 <= lat <= 90):
        return None
    return lon, lat


def _point_problem(geometry: Any) -> str:
    if not isinstance(geometry, Mapping):
        return "no geometry"
    coords = geometry.get("coordinates")
    if not isinstance(coords, (list, tuple)) or len(coords) < 2:
        return "no geometry"
    lon, lat = _number(coords[0]), _number(coords[1])
    if lon is None or lat is None:
        return "no geometry" if coords[0] is None or coords[1] is None else "coordinates out of range"
    return "coordinates out of range"


def position_problem(entity: Mapping[str, Any]) -> str | None:
    """None when a Graph answer has a usable position, else why not: "no geometry" or "coordinates out of range"."""
    if _point(entity.get("computed_geometry")) or _point(entity.get("geometry")):
        return None
    problems = {_point_problem(entity.get(key)) for key in ("computed_geometry", "geometry")}
    return "coordinates out of range" if "coordinates out of range" in problems else "no geometry"


def graph_record(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A record from a Graph image entity or search result (any subset of fields). ``image_id`` may be None."""
    position = _point(entity.get("computed_geometry")) or _point(entity.get("geometry"))
    camera_type = _text(entity.get("camera_type"))
    is_pano = _flag(entity.get("is_pano"))
    if is_pano is None and camera_type is not None:
        is_pano = camera_type in ("spherical", "equirectangular")
    compass = _number(entity.get("computed_compass_angle"))
    if compass is None:
        compass = _number(entity.get("compass_angle"))
    creator = entity.get("creator")
    width, height = _number(entity.get("width")), _number(entity.get("height"))
    return {
        "image_id": _text(entity.get("id")),
        "sequence_id": _text(entity.get("sequence") if "sequence" in entity else entity.get("sequence_id")),
        "captured_at": captured_at_utc(entity.get("captured_at")),
        "compass_angle": compass,
        "is_pano": is_pano,
        "camera_type": camera_type,
        "organization_id": _text(entity.get("organization_id")),
        "creator_id": _text(creator.get("id")) if isinstance(creator, Mapping) else _text(entity.get("creator_id")),
        "lon": position[0] if position else None,
        "lat": position[1] if position else None,
        "width": int(width) if width else None,
        "height": int(height) if height else None,
    }


def tile_record(properties: Mapping[str, Any], lon: float, lat: float) -> dict[str, Any]:
    """A record from the properties of a vector-tile ``image`` feature at ``lon``, ``lat``."""
    record = graph_record({**properties, "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    record["sequence_id"] = _text(properties.get("sequence_id"))
    return record


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with every non-None value of ``update`` laid over it."""
    merged = dict(base)
    merged.update({k: v for k, v in update.items() if v is not None})
    return merged
