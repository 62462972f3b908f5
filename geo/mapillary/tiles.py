"""Discovery through the z14 coverage vector tiles (``mly1_public`` / ``mly1_computed_public``, layer ``image``).

The z14 web-mercator tile is also the unit of work of the whole ingestion: the flow maps one
task per tile, and the resume manifest records discovery per tile. Tiles are named
``"14/x/y"``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import mapbox_vector_tile
import mercantile

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
    """Names of the z14 tiles that intersect ``bbox``, west to east then north to south."""
    return [tile_name(t) for t in mercantile.tiles(bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat, zoom)]


def tile_box(name: str, bbox: BBox | None = None) -> BBox:
    """The lon/lat bounds of a tile, clipped to ``bbox`` when given."""
    west, south, east, north = mercantile.bounds(parse_tile(name))
    if bbox is not None:
        west, south = max(west, bbox.min_lon), max(south, bbox.min_lat)
        east, north = min(east, bbox.max_lon), min(north, bbox.max_lat)
    return BBox(west, south, east, north)


def tile_points(data: bytes, name: str, layer: str = IMAGE_LAYER) -> Iterator[tuple[float, float, dict[str, Any]]]:
    """(lon, lat, properties) of every point feature in ``layer`` of the MVT bytes of tile ``name``.

    Tile coordinates (0..extent, y up) are mapped to web-mercator metres inside the tile's
    bounds and then to WGS84 degrees. Empty data (a tile without coverage) yields nothing.
    """
    if not data:
        return
    content = mapbox_vector_tile.decode(data).get(layer)
    if not content:
        return
    extent = float(content.get("extent", 4096))
    left, bottom, right, top = mercantile.xy_bounds(parse_tile(name))
    scale_x, scale_y = (right - left) / extent, (top - bottom) / extent
    for feature in content["features"]:
        geometry = feature.get("geometry") or {}
        if geometry.get("type") == "Point":
            x, y = geometry["coordinates"][:2]
            lon, lat = mercantile.lnglat(left + x * scale_x, bottom + y * scale_y)
            yield lon, lat, feature.get("properties") or {}


def decode_image_layer(data: bytes, name: str, layer: str = IMAGE_LAYER) -> list[dict[str, Any]]:
    """Image records of the points in ``layer`` of tile ``name``; features without an image id are skipped."""
    records, skipped = [], 0
    for lon, lat, properties in tile_points(data, name, layer):
        record = tile_record(properties, lon, lat)
        if record["image_id"] is None:
            skipped += 1
        else:
            records.append(record)
    if skipped:
        log.debug("tile %s: skipped %d %s features without an image id", name, skipped, layer)
    return records
