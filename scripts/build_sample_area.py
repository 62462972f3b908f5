"""Rebuild the bundled Stuttgart sample area from the shared Global StreetScapes sample.

Maintainers only: the product never reads ``../shared`` at run time. This script documents how
``geo/sample_area/stuttgart/`` was made, so the bundle can be checked or regenerated:

    python scripts/build_sample_area.py ../shared/sample

It downsizes the 19 Stuttgart Mapillary JPEGs to 1024 px on the long side (what Mapillary's
``thumb_1024_url`` serves), writes their metadata in the ``images`` contract to
``images.parquet`` and the 190 OSM edges around them to ``roads.parquet``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
from PIL import Image

THUMB_LONG_SIDE_PX = 1024
JPEG_QUALITY = 85
OUT = Path(__file__).resolve().parents[1] / "geo" / "sample_area" / "stuttgart"


def build_images(shared: Path) -> pd.DataFrame:
    rows = [
        r
        for r in csv.DictReader((shared / "gss" / "sample_mapping.csv").open())
        if r["jpeg_file"] and r["city"] == "Stuttgart" and r["source"] == "Mapillary"
    ]
    records = []
    for r in rows:
        image_id = r["orig_id"]
        src = shared / "gss" / r["jpeg_file"]
        dst = OUT / "images" / f"{image_id}.jpg"
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_LONG_SIDE_PX, THUMB_LONG_SIDE_PX), Image.Resampling.LANCZOS)
            im.save(dst, "JPEG", quality=JPEG_QUALITY, optimize=True)
            width, height = im.size
        compass = r["computed_compass_angle"] or r["heading"]
        records.append(
            {
                "image_id": image_id,
                "source": "mapillary",
                "sequence_id": r["sequence_id"],
                "captured_at": pd.Timestamp(r["datetime_local"]).tz_convert("UTC"),
                "compass_angle": float(compass),
                "is_pano": r["camera_type"] == "spherical",
                "camera_type": r["camera_type"],
                "lon": float(r["lon"]),
                "lat": float(r["lat"]),
                "width": width,
                "height": height,
                "path": f"images/{image_id}.jpg",
                "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            }
        )
    return pd.DataFrame.from_records(records).sort_values("image_id", ignore_index=True)


def _first(value):
    """OSMnx merges ways into one edge and stores a list of their tags: keep the first."""
    if isinstance(value, str) and value.startswith("["):
        value = json.loads(value)
    if hasattr(value, "__len__") and not isinstance(value, str):
        return value[0] if len(value) else None
    return value


def build_roads(shared: Path) -> gpd.GeoDataFrame:
    edges = gpd.read_file(shared / "osm" / "gss_snapped_edges_stuttgart.geojson")
    roads = gpd.GeoDataFrame(
        {
            "segment_id": [f"osm:{u}-{v}-{k}" for u, v, k in zip(edges.u, edges.v, edges.key)],
            "osm_way_id": [int(_first(v)) for v in edges.osmid],
            "highway": [_first(h) for h in edges.highway],
            "name": [_first(n) for n in edges.name],
        },
        geometry=edges.geometry.values,
        crs="EPSG:4326",
    )
    return roads.sort_values("segment_id", ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_sample", type=Path, help="path to shared/sample")
    args = parser.parse_args()
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    images = build_images(args.shared_sample)
    images.to_parquet(OUT / "images.parquet", index=False)
    roads = build_roads(args.shared_sample)
    roads.to_parquet(OUT / "roads.parquet", index=False, schema_version="1.1.0", write_covering_bbox=True)
    print(f"{len(images)} images, {len(roads)} road segments -> {OUT}")


if __name__ == "__main__":
    main()
