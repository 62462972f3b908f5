"""Publish a run: GeoParquet 1.1 maps of segments and images, written atomically.

``segments.parquet``: one row per road segment, one column group per attribute
(``weather_label``, ``weather_share``, ``weather_share_ci_low``, ...), plus ``n_images``.
``images.parquet``: one point per image with its match and one label/confidence pair per
attribute. Both carry GeoParquet 1.1 ``geo`` metadata (WKB, PROJJSON CRS, bbox covering).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import duckdb
import geopandas as gpd
import pandas as pd

from warehouse.db import sql

SEGMENT_GROUP = ("label", "share", "share_ci_low", "share_ci_high", "mean_confidence")
IMAGE_GROUP = ("label", "confidence")


def write_geoparquet(frame: gpd.GeoDataFrame, path: str | os.PathLike) -> Path:
    """Write GeoParquet 1.1 (bbox covering column, CRS) to a temporary name, then rename."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    frame.to_parquet(partial, index=False, schema_version="1.1.0", write_covering_bbox=True, compression="zstd")
    os.replace(partial, path)
    return path


def _wide(long: pd.DataFrame, keys: list[str], group: Sequence[str], attributes: Sequence[str]) -> pd.DataFrame:
    """One row per key, columns ``<attribute>_<field>`` in attribute order."""
    base = long[keys].drop_duplicates(subset=keys[0]).set_index(keys[0])
    rows = long.dropna(subset=["attribute"])
    for attribute in attributes:
        part = rows[rows["attribute"] == attribute].set_index(keys[0])
        for field in group:
            base[f"{attribute}_{field}"] = part[field].reindex(base.index)
    return base.reset_index()


def export_segments(con: duckdb.DuckDBPyConnection, path: str | os.PathLike, attributes: Sequence[str]) -> Path:
    """Write ``segments.parquet`` from a built audit database."""
    long = con.execute(sql("export_segments")).df()
    keys = ["segment_id", "osm_way_id", "highway", "name", "length_m", "wkb"]
    wide = _wide(long, keys, SEGMENT_GROUP, attributes)
    totals = long.groupby("segment_id").agg(n_images=("n_images", "max"), first_captured_at=("first_captured_at", "min"),
                                            last_captured_at=("last_captured_at", "max"))
    wide = wide.join(totals, on="segment_id")
    wide["n_images"] = wide["n_images"].fillna(0).astype("int32")
    frame = gpd.GeoDataFrame(wide.drop(columns="wkb"), geometry=gpd.GeoSeries.from_wkb(wide["wkb"].map(bytes)), crs="EPSG:4326")
    return write_geoparquet(frame, path)


def export_images(con: duckdb.DuckDBPyConnection, path: str | os.PathLike, attributes: Sequence[str]) -> Path:
    """Write ``images.parquet`` from a built audit database."""
    long = con.execute(sql("export_images")).df()
    keys = ["image_id", "source", "sequence_id", "captured_at", "compass_angle", "is_pano", "camera_type", "lon", "lat",
            "width", "height", "path", "sha256", "wkb", "segment_id", "distance_m", "heading_difference_deg",
            "unmatched_reason"]
    wide = _wide(long, keys, IMAGE_GROUP, attributes)
    methods = long.dropna(subset=["attribute"]).groupby("image_id")["method"].agg(lambda m: ",".join(sorted(set(m))))
    wide["method"] = wide["image_id"].map(methods)
    frame = gpd.GeoDataFrame(wide.drop(columns="wkb"), geometry=gpd.GeoSeries.from_wkb(wide["wkb"].map(bytes)), crs="EPSG:4326")
    return write_geoparquet(frame, path)


def export_run(database: str | os.PathLike, out: str | os.PathLike, attributes: Sequence[str]) -> dict[str, str]:
    """Write ``segments.parquet`` and ``images.parquet`` next to ``database``; returns their paths."""
    from warehouse.db import connect

    out = Path(out)
    with connect(database, read_only=True) as con:
        segments = export_segments(con, out / "segments.parquet", attributes)
        images = export_images(con, out / "images.parquet", attributes)
    return {"segments": str(segments), "images": str(images)}
