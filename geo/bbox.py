"""Bounding boxes: parse the forms users type, refuse bad ones before any work starts.

Accepted: ``"minlon,minlat,maxlon,maxlat"`` (spaces allowed), a JSON list string
``"[minlon, minlat, maxlon, maxlat]"``, or a list/tuple of 4 numbers. Coordinates are WGS84
degrees. Every refusal is a ``BBoxError`` that says what is wrong and how to fix it.

The area is that of the longitude/latitude rectangle on the WGS84 ellipsoid (exact, by the
authalic-latitude formula: edges along meridians and parallels), so it is right at any size
and at any place, the whole world included (about 510 million km², refused by the area
limit). Boxes do not wrap: one that crosses the antimeridian (given as ``170,..,-170,..``) is
refused with the two boxes to run instead, and one that spans every longitude (-180 to 180) is
refused. On a command line a box that starts with a minus sign reads as an option to argparse;
``bbox_argv`` rewrites ``--bbox -122.5,...`` to ``--bbox=-122.5,...`` before parsing.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Sequence


from contracts.errors import CityAuditError

#: Largest area accepted by default; a whole large city fits, a country does not.
DEFAULT_MAX_AREA_KM2 = 2_500.0
_WGS84_A, _WGS84_F = 6_378_137.0, 1 / 298.257223563
_E2 = _WGS84_F * (2 - _WGS84_F)
_E = math.sqrt(_E2)
_B2 = _WGS84_A ** 2 * (1 - _E2)
_FORM = "give it as minlon,minlat,maxlon,maxlat in WGS84 degrees, e.g. 9.16,48.76,9.18,48.78"


class BBoxError(CityAuditError, ValueError):
    """A bounding box that cannot be used, with the reason and the fix in the message."""


@dataclass(frozen=True)
class BBox:
    """A WGS84 longitude/latitude box."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    def as_list(self) -> list[float]:
        return [self.min_lon, self.min_lat, self.max_lon, self.max_lat]

    def __str__(self) -> str:
        return ",".join(f"{v:.6f}".rstrip("0").rstrip(".") for v in self.as_list())

    @property
    def area_km2(self) -> float:
        """Area of the box (a lon/lat rectangle) on the WGS84 ellipsoid, in km²; exact at any size."""
        width_rad = math.radians(self.max_lon - self.min_lon)
        return abs(width_rad * (_zone_m2(self.max_lat) - _zone_m2(self.min_lat))) / 1e6

    @property
    def center(self) -> tuple[float, float]:
        return (self.min_lon + self.max_lon) / 2, (self.min_lat + self.max_lat) / 2

    def contains(self, lon: float, lat: float) -> bool:
        return self.min_lon <= lon <= self.max_lon and self.min_lat <= lat <= self.max_lat

    def utm_crs(self) -> str:
        """The UTM zone CRS (``EPSG:326xx`` north, ``EPSG:327xx`` south) of the box centre, for metric work.

        The zone is the one the EPSG database (pyproj) gives for the centre; see ``utm_crs_at``.
        """
        lon, lat = self.center
        return utm_crs_at(lon, lat)


@functools.lru_cache(maxsize=256)
def utm_crs_at(lon: float, lat: float) -> str:
    """The WGS84 UTM zone CRS of a point, from pyproj's EPSG database (``query_utm_crs_info``).

    A point on a zone border (or on the equator) lies in two zones' areas of use: the eastern zone
    and the northern hemisphere win. The EPSG zones are the plain 6° ones: the Norway (32V) and
    Svalbard (31X-37X) exceptions of the military grid are not applied. Beyond UTM's latitudes
    (north of 84°N, south of 80°S) the polar stereographic CRS (UPS, ``EPSG:32661`` / ``EPSG:32761``).
    """
    from pyproj.aoi import AreaOfInterest  # imported on use: the config module imports this one
    from pyproj.database import query_utm_crs_info

    north = lat >= 0
    zones = [z for z in query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
             if z.name.endswith("N" if north else "S")]
    if not zones:
        return "EPSG:32661" if north else "EPSG:32761"
    return f"EPSG:{max(int(z.code) for z in zones)}"


def _zone_m2(lat: float) -> float:
    """Area of the WGS84 ellipsoid between the equator and ``lat``, per radian of longitude (signed)."""
    sin = math.sin(math.radians(lat))
    return _B2 / 2 * (sin / (1 - _E2 * sin * sin) + math.log((1 + _E * sin) / (1 - _E * sin)) / (2 * _E))


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:.6f}".rstrip("0").rstrip(".") for v in values)


def _looks_like_numbers(text: str) -> bool:
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return bool(parts)


def bbox_argv(argv: Sequence[str], flags: Sequence[str] = ("--bbox",)) -> list[str]:
    """``argv`` with ``--bbox -122.5,37.7,-122.3,37.8`` joined to ``--bbox=-122.5,37.7,-122.3,37.8``.

    argparse reads a value that starts with ``-`` and is not a single number as the next
    option ("expected one argument"); call this on ``sys.argv[1:]`` before ``parse_args``.
    Only a value made of numbers is joined, so ``--bbox --out x`` still fails as it should.
    """
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item in flags and i + 1 < len(items) and items[i + 1].startswith("-") and _looks_like_numbers(items[i + 1]):
            out.append(f"{item}={items[i + 1]}")
            i += 2
            continue
        if item == "--":
            out.extend(items[i:])
            break
        out.append(item)
        i += 1
    return out


def _values(raw: str | Sequence[float]) -> list[float]:
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith(("[", "{")):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BBoxError(f"bbox {raw!r} is not valid JSON ({exc.msg}); {_FORM}") from None
        else:
            raw = [p for p in text.replace(" ", ",").split(",") if p]
    if isinstance(raw, dict) or not isinstance(raw, (list, tuple)):
        raise BBoxError(f"bbox {raw!r} is not a list of 4 numbers; {_FORM}")
    if len(raw) != 4:
        raise BBoxError(f"bbox needs exactly 4 numbers, got {len(raw)} ({raw!r}); {_FORM}")
    values = []
    for item in raw:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise BBoxError(f"bbox value {item!r} is not a number; {_FORM}") from None
        if not math.isfinite(value):
            raise BBoxError(f"bbox value {item!r} is not finite; {_FORM}")
        values.append(value)
    return values


def parse_bbox(raw: str | Sequence[float] | BBox, max_area_km2: float | None = DEFAULT_MAX_AREA_KM2) -> BBox:
    """Parse and validate a bounding box.

    Refuses: not 4 numbers, longitudes outside [-180, 180], latitudes outside [-90, 90],
    swapped corners (min > max, including lat/lon given in the wrong order), zero area, and
    boxes larger than ``max_area_km2`` (``None`` disables that check).
    """
    if isinstance(raw, BBox):
        values = raw.as_list()
    else:
        values = _values(raw)
    min_lon, min_lat, max_lon, max_lat = values
    for name, value in (("min longitude", min_lon), ("max longitude", max_lon)):
        if not -180 <= value <= 180:
            hint = " (did you give latitude first? the order is lon,lat)" if -90 <= min_lat <= 90 and abs(value) > 90 else ""
            raise BBoxError(f"{name} {value} is outside [-180, 180]{hint}; {_FORM}")
    for name, value in (("min latitude", min_lat), ("max latitude", max_lat)):
        if not -90 <= value <= 90:
            hint = " (did you give latitude first? the order is lon,lat)" if abs(value) <= 180 else ""
            raise BBoxError(f"{name} {value} is outside [-90, 90]{hint}; {_FORM}")
    south, north = min(min_lat, max_lat), max(min_lat, max_lat)
    if min_lon > max_lon and (max_lon + 360 - min_lon) < (min_lon - max_lon):
        raise BBoxError(
            f"bbox {_fmt(values)} crosses the antimeridian (180°), which a box cannot do here; run its two "
            f"halves separately: {_fmt([min_lon, south, 180, north])} and {_fmt([-180, south, max_lon, north])}"
        )
    if min_lon < max_lon and max_lon - min_lon > 180 and not (min_lon <= -180 and max_lon >= 180):
        raise BBoxError(
            f"bbox {_fmt(values)} is {max_lon - min_lon:g}° wide, more than half the globe; if you meant the "
            f"narrow box across the antimeridian (180°), run its two halves separately: "
            f"{_fmt([max_lon, south, 180, north])} and {_fmt([-180, south, min_lon, north])}"
        )
    if min_lon > max_lon or min_lat > max_lat:
        raise BBoxError(
            f"bbox corners are swapped: min must be south-west and max north-east, got "
            f"minlon={min_lon} maxlon={max_lon}, minlat={min_lat} maxlat={max_lat}; "
            f"did you mean {min(min_lon, max_lon)},{min(min_lat, max_lat)},{max(min_lon, max_lon)},{max(min_lat, max_lat)}?"
        )
    if min_lon == max_lon or min_lat == max_lat:
        raise BBoxError(f"bbox {values} has zero area (min equals max); widen it so both sides are positive")
    bbox = BBox(min_lon, min_lat, max_lon, max_lat)
    if max_area_km2 is not None and bbox.area_km2 > max_area_km2:
        raise BBoxError(
            f"bbox covers {bbox.area_km2:,.0f} km², more than the limit of {max_area_km2:,.0f} km²; "
            f"split the area into smaller boxes or raise the limit (--max-area-km2)"
        )
    if min_lon <= -180 and max_lon >= 180:
        raise BBoxError(f"bbox {_fmt(values)} spans every longitude (-180 to 180), i.e. round the whole globe; "
                        f"give the area you mean, e.g. {_FORM.split('e.g. ')[-1]}")
    return bbox
