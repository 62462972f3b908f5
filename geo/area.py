"""A run's area as a polygon: a city boundary read from a file, carried wherever a ``BBox`` goes.

``--area FILE`` names a GeoJSON, GeoPackage or GeoParquet boundary in any CRS (polygons,
multipolygons, holes; several features are merged). ``Area`` is a ``BBox`` (its bounds) that also
holds the polygon in WGS84, so every stage that takes a bbox takes it unchanged; the stages that
know about polygons ask ``area_polygon(bbox)`` and then:

- query only the z14 tiles and search boxes that intersect the polygon (``geo.mapillary``);
- drop the images outside it, counted as ``"outside area"`` in the ingest counts;
- drop the road segments that do not intersect it, counted in the segments' ``attrs["dropped"]``.

With ``--bbox`` too, the area is the intersection of both (refused when they do not overlap):
a box cuts a part out of a city. The area limit (``--max-area-km2``) applies to the polygon's
exact area on the WGS84 ellipsoid (pyproj ``Geod``), as it does to a box's. Every refusal is an
``AreaError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import shapely

from contracts.errors import CityAuditError
from geo.bbox import DEFAULT_MAX_AREA_KM2, BBox, BBoxError, parse_bbox

#: The reason (in the ingest counts) of an image inside the area's bounds but outside its polygon.
OUTSIDE_AREA = "outside area"
AREA_SUFFIXES = (".geojson", ".json", ".gpkg", ".parquet", ".geoparquet")


class AreaError(CityAuditError, ValueError):
    """An area file that cannot be used: missing, unreadable, not polygons, empty, without a usable CRS, too big."""


@dataclass(frozen=True)
class Area(BBox):
    """A polygon area (WGS84 lon/lat) and its bounds; a ``BBox`` everywhere one is expected.

    ``contains`` stays the box test; ``contains_points`` and ``intersects_box`` test the polygon.
    """

    polygon: Any = field(default=None, repr=False)  # shapely (Multi)Polygon in EPSG:4326
    source: str = field(default="", compare=False)  # the file it was read from, for messages

    def __post_init__(self) -> None:
        if self.polygon is not None:
            shapely.prepare(self.polygon)

    def __reduce__(self):  # pickled (Prefect, processes) as WKB: prepared geometries are not picklable everywhere
        return _area_from_wkb, (self.min_lon, self.min_lat, self.max_lon, self.max_lat,
                                shapely.to_wkb(self.polygon), self.source)

    @property
    def bbox(self) -> BBox:
        """The bounds as a plain box."""
        return BBox(self.min_lon, self.min_lat, self.max_lon, self.max_lat)

    @property
    def area_km2(self) -> float:
        """The polygon's area on the WGS84 ellipsoid in km² (holes subtracted)."""
        return polygon_area_km2(self.polygon)

    def contains_points(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Per point, True when it lies in the polygon or on its boundary."""
        return shapely.intersects_xy(self.polygon, np.asarray(lon, float), np.asarray(lat, float))

    def intersects_box(self, west: float, south: float, east: float, north: float) -> bool:
        """True when the lon/lat rectangle touches the polygon."""
        return bool(shapely.intersects(self.polygon, shapely.box(west, south, east, north)))


def _area_from_wkb(min_lon, min_lat, max_lon, max_lat, wkb, source) -> Area:
    return Area(min_lon, min_lat, max_lon, max_lat, polygon=shapely.from_wkb(wkb), source=source)


def area_polygon(bbox: BBox | None):
    """The polygon of an ``Area``; None for a plain ``BBox`` (or None)."""
    return getattr(bbox, "polygon", None)


def polygon_area_km2(polygon) -> float:
    """Exact area of a WGS84 (multi)polygon on the ellipsoid, in km²."""
    from pyproj import Geod

    return abs(Geod(ellps="WGS84").geometry_area_perimeter(polygon)[0]) / 1e6


def check_area_file(path: str | os.PathLike) -> str:
    """``path`` if it names an existing file of a readable kind; ``AreaError`` otherwise (without reading it)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise AreaError(f"area file {str(file)!r} does not exist; pass a GeoJSON, GeoPackage or GeoParquet boundary")
    if file.suffix.lower() not in AREA_SUFFIXES:
        raise AreaError(f"area file {str(file)!r} is not GeoJSON, GeoPackage or GeoParquet (by its name: "
                        f"{', '.join(AREA_SUFFIXES)})")
    return str(path)


@functools.lru_cache(maxsize=8)
def _read_polygon(path: str, mtime_ns: int, size: int):
    """The union of the polygons in ``path`` in WGS84 (cached by file identity: config and flow both ask)."""
    import geopandas as gpd

    try:
        frame = gpd.read_parquet(path) if path.lower().endswith((".parquet", ".geoparquet")) else gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio and pyarrow raise many types for a bad file
        raise AreaError(f"area file {path!r} cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None
    geoms = frame.geometry[~(frame.geometry.isna() | frame.geometry.is_empty)] if len(frame) else frame.geometry
    if not len(geoms):
        raise AreaError(f"area file {path!r} has no geometry (no features, or only empty ones); "
                        f"save the boundary polygon into it")
    kinds = sorted(set(geoms.geom_type))
    if not set(kinds) <= {"Polygon", "MultiPolygon"}:
        raise AreaError(f"area file {path!r} is not a polygon boundary: it holds {', '.join(kinds)}; "
                        f"an area must be Polygon or MultiPolygon features")
    if frame.crs is None:
        west, south, east, north = geoms.total_bounds
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            raise AreaError(f"area file {path!r} has no CRS and its coordinates ({west:g},{south:g},{east:g},"
                            f"{north:g}) are not lon/lat degrees; save it with its CRS")
        geoms = geoms.set_crs("EPSG:4326")  # no CRS, but the coordinates fit: WGS84 lon/lat assumed
    polygon = shapely.union_all(shapely.make_valid(geoms.to_crs("EPSG:4326").to_numpy()))
    polygon = _polygonal(polygon)
    if polygon is None or polygon.is_empty:
        raise AreaError(f"area file {path!r} has polygons without any area (degenerate rings); fix the boundary")
    return polygon


def _polygonal(geometry):
    """Only the polygon parts of a geometry (``make_valid`` may add lines or points); None when there are none."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def read_area(path: str | os.PathLike, bbox: str | Sequence[float] | BBox | None = None,
              max_area_km2: float | None = DEFAULT_MAX_AREA_KM2) -> Area:
    """The area of the boundary file ``path`` (clipped to ``bbox`` when one is given), checked.

    Returns an ``Area`` whose bounds are those of the (clipped) polygon. Raises ``AreaError`` for
    a file that is missing, unreadable, empty or not polygons, with no CRS and coordinates that
    are not degrees, that does not overlap ``bbox``, that crosses the antimeridian, or whose
    polygon is larger than ``max_area_km2`` (``None``: no limit). ``BBoxError`` for a bad ``bbox``.
    """
    name = check_area_file(path)
    file = Path(path).expanduser().resolve()
    stat = file.stat()
    polygon = _read_polygon(str(file), stat.st_mtime_ns, stat.st_size)
    if bbox is not None:
        box = parse_bbox(bbox, max_area_km2=None)
        polygon = _polygonal(shapely.intersection(polygon, shapely.box(*box.as_list())))
        if polygon is None or polygon.is_empty:
            raise AreaError(f"the bbox {box} and the area of {name!r} do not overlap; give a bbox inside the area, "
                            f"or only --area")
    west, south, east, north = polygon.bounds
    if east - west > 180:
        raise AreaError(f"area {name!r} spans {east - west:.0f}° of longitude (it crosses the antimeridian or is "
                        f"larger than half the globe); split it into parts on each side of 180°")
    try:
        bounds = parse_bbox([west, south, east, north], max_area_km2=None)
    except BBoxError as exc:
        raise AreaError(f"area {name!r}: its bounds cannot be used: {exc}") from None
    area = Area(*bounds.as_list(), polygon=polygon, source=name)
    if max_area_km2 is not None and area.area_km2 > max_area_km2:
        raise AreaError(f"area {name!r} covers {area.area_km2:,.0f} km², more than the limit of {max_area_km2:,.0f} km²; "
                        f"split it into smaller areas or raise the limit (--max-area-km2)")
    return area


def resolve_area(bbox: str | Sequence[float] | BBox | None, area_file: str | os.PathLike | None,
                 max_area_km2: float | None = DEFAULT_MAX_AREA_KM2) -> BBox:
    """The run's area from ``--bbox`` and/or ``--area``: a ``BBox``, or an ``Area`` when a file is given.

    Only a bbox: that box. Only a file: its polygon, with the polygon's bounds. Both: their intersection.
    """
    if area_file:
        return read_area(area_file, bbox, max_area_km2)
    if bbox is None:
        raise BBoxError("no area given: pass --bbox minlon,minlat,maxlon,maxlat or --area FILE (a boundary polygon)")
    return parse_bbox(bbox, max_area_km2=max_area_km2)
