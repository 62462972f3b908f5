"""Discovery through the z14 coverage vector tiles (``mly1_public`` / ``mly1_computed_public``, layer ``image``).

The z14 web-mercator tile is also the unit of work of the whole ingestion: the flow maps one
task per tile, and the resume manifest records discovery per tile. Tiles are named
``"14/x/y"``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import mapbox_vector_tile
import mercantile

from geo.area import area_polygon
from geo.bbox import BBox
from geo.mapillary.records import tile_record

ZOOM = 14
IMAGE_LAYER = "image"
log = logging.getLogger("geo.mapillary")


def tile_name(tile: mercantile.Tile) -> str:
    """``"z/x/y"`` for a mercantile tile."""
    return f"{tile.z}/{tile.x}/{tile.y}"


def parse_tile(name: str) -> mercantile.Tile:
    """The mercantile tile of a ``"z/x/y"`` name."""
    z, x, y = (int(part) for part in name.split("/"))
    return mercantile.Tile(x=x, y=y, z=z)


def covering_tiles(bbox: BBox, zoom: int = ZOOM) -> list[str]:
    """Names of the z14 tiles that intersect ``bbox``, west to east then north to south.

    For a ``geo.area.Area`` only the tiles that intersect its polygon (a city's boundary, not its bounds).
    """
    tiles = mercantile.tiles(bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat, zoom)
    if area_polygon(bbox) is not None:
        tiles = [t for t in tiles if bbox.intersects_box(*mercantile.bounds(t))]
    return [tile_name(t) for t in tiles]


def tile_box(name: str, bbox: BBox | None = None) -> BBox:
    """The lon/lat bounds of a tile, clipped to ``bbox`` when given."""
    west, south, east, north = mercantile.bounds(parse_tile(name))
    if bbox is not None:
        west, south = max(west, bbox.min_lon), max(south, bbox.min_lat)
        east, north = min(east, bbox.max_lon), min(north, bbox.max_lat)
    return BBox(west, south, east, north)


class TileDecodeError(ValueError):
    """Bytes that are not a Mapbox vector tile."""


def _decode(data: bytes, layer: str) -> dict[str, Any] | None:
    try:
        decoded = mapbox_vector_tile.decode(data)
    except Exception as exc:  # noqa: BLE001 - protobuf and the decoder raise many types for bad bytes
        raise TileDecodeError(f"{len(data)} bytes that do not decode as a Mapbox vector tile "
                              f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(decoded, dict):
        raise TileDecodeError(f"a vector tile that decodes to {type(decoded).__name__}, not layers")
    content = decoded.get(layer)
    if content is not None and not (isinstance(content, dict) and isinstance(content.get("features", []), list)):
        raise TileDecodeError(f"a vector tile whose {layer!r} layer has no feature list")
    return content or None


def tile_features(data: bytes, name: str, layer: str = IMAGE_LAYER
                  ) -> list[tuple[int, float | None, float | None, dict[str, Any], str | None]]:
    """(index, lon, lat, properties, problem) of every feature in ``layer`` of the MVT bytes of tile ``name``.

    ``problem`` is None for a usable point, else "no geometry" (not a point) or "coordinates out
    of range". Raises ``TileDecodeError`` when the bytes are not a vector tile. Tile coordinates
    (0..extent, y up) are mapped to web-mercator metres inside the tile's bounds and then to
    WGS84 degrees. Empty data (a tile without coverage) has no features.
    """
    if not data:
        return []
    content = _decode(data, layer)
    if not content:
        return []
    try:
        extent = float(content.get("extent", 4096))
    except (TypeError, ValueError):
        extent = 0.0
    if not math.isfinite(extent) or extent <= 0:
        raise TileDecodeError(f"a vector tile whose {layer!r} layer has extent {content.get('extent')!r}")
    left, bottom, right, top = mercantile.xy_bounds(parse_tile(name))
    scale_x, scale_y = (right - left) / extent, (top - bottom) / extent
    out = []
    for index, feature in enumerate(content["features"]):
        feature = feature if isinstance(feature, dict) else {}
        properties = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        geometry = feature.get("geometry") if isinstance(feature.get("geometry"), dict) else {}
        coords = geometry.get("coordinates")
        if geometry.get("type") != "Point" or not isinstance(coords, (list, tuple)) or len(coords) < 2:
            out.append((index, None, None, properties, "no geometry"))
            continue
        try:
            lon, lat = mercantile.lnglat(left + float(coords[0]) * scale_x, bottom + float(coords[1]) * scale_y)
        except (TypeError, ValueError, OverflowError):
            out.append((index, None, None, properties, "coordinates out of range"))
            continue
        if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
            out.append((index, None, None, properties, "coordinates out of range"))
            continue
        out.append((index, lon, lat, properties, None))
    return out


def tile_points(data: bytes, name: str, layer: str = IMAGE_LAYER) -> Iterator[tuple[float, float, dict[str, Any]]]:
    """(lon, lat, properties) of every usable point feature in ``layer`` (see ``tile_features``)."""
    for _, lon, lat, properties, problem in tile_features(data, name, layer):
        if problem is None:
            yield lon, lat, properties


def decode_tile(data: bytes, name: str, layer: str = IMAGE_LAYER,
                bbox: BBox | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Image records of tile ``name`` and failures (item id -> reason) of the features that cannot be one.

    Features without an image id are named ``feature <i> of tile <name>``. Points outside
    ``bbox`` are not part of the area asked for: they are neither records nor failures.
    """
    records, failures = [], {}
    for index, lon, lat, properties, problem in tile_features(data, name, layer):
        image_id = tile_record(properties, 0.0, 0.0)["image_id"]
        if image_id is None:
            failures[f"feature {index} of tile {name}"] = "no image id: a vector-tile feature without an id"
        elif problem is not None:
            failures[image_id] = f"{problem}: vector-tile feature {image_id} of tile {name}"
        elif bbox is None or bbox.contains(lon, lat):
            records.append(tile_record(properties, lon, lat))
    return records, failures


def decode_image_layer(data: bytes, name: str, layer: str = IMAGE_LAYER) -> list[dict[str, Any]]:
    """Image records of the points in ``layer`` of tile ``name``; features without an image id are skipped."""
    records, failures = decode_tile(data, name, layer)
    if failures:
        log.debug("tile %s: %d %s features are not usable image records", name, len(failures), layer)
    return records
