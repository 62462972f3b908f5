"""Road segments for a bounding box, in the ``segments`` contract.

Sources: ``sample`` (the bundled 190 OSM edges around the Stuttgart sample images), the path of
a local OpenStreetMap extract (``.osm.pbf``: read, filtered by road class and split into
segments by ``geo.osm``), or the path of a vector file of road lines (GeoParquet, GeoPackage,
GeoJSON, ...). Segments that intersect the bbox (and an area's polygon) are kept whole;
``length_m`` is geodesic on the WGS84 ellipsoid.
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Geod
from shapely.geometry import box

from geo.area import area_polygon
from geo.bbox import BBox
from geo.sources import RoadSourceError, check_roads, road_source_for

_GEOD = Geod(ellps="WGS84")


def _read(path: Path) -> gpd.GeoDataFrame:
    try:
        frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001
        raise RoadSourceError(f"could not read roads from {str(path)!r}: {exc}") from exc
    if frame.crs is None:
        raise RoadSourceError(f"{str(path)!r} has no CRS; save it with one (EPSG:4326 expected)")
    return frame.to_crs("EPSG:4326")


def load_road_segments(bbox: BBox, roads: str | os.PathLike = "sample", *,
                       road_classes: tuple[str, ...] | list[str] | str | None = None,
                       max_segment_length_m: float | None = None) -> gpd.GeoDataFrame:
    """Road segments intersecting ``bbox`` with ``segment_id, osm_way_id, highway, name, length_m, geometry``.

    ``bbox`` may be a ``geo.area.Area``: segments inside its bounds that miss its polygon are dropped
    and counted (``drop_outside_area``).

    ``roads`` picks the road source (``geo.sources.ROAD_SOURCES``): ``'sample'``, a ``.osm.pbf``
    extract (``road_classes``, highway values, and ``max_segment_length_m`` apply to it) or a
    ready-made file of road lines, used as it is.
    """
    check_roads(roads)
    segments = road_source_for(roads).load(bbox, roads, road_classes=road_classes,
                                           max_segment_length_m=max_segment_length_m)
    return drop_outside_area(segments, bbox)


def drop_outside_area(segments: gpd.GeoDataFrame, area: BBox) -> gpd.GeoDataFrame:
    """The segments that intersect ``area``'s polygon (kept whole), with ``attrs["counts"]`` saying how many
    were dropped (``segments_outside_area``); a plain box keeps them all (its sources already cut to it)."""
    polygon = area_polygon(area)
    if polygon is None:
        return segments
    inside = shapely.intersects(polygon, segments.geometry.to_numpy()) if len(segments) else np.zeros(0, bool)
    kept = segments.loc[inside].reset_index(drop=True)
    kept.attrs["counts"] = {"segments_outside_area": int((~inside).sum())}
    return kept


def read_road_lines(bbox: BBox, path: Path, roads: str | os.PathLike) -> gpd.GeoDataFrame:
    """The road lines of the vector file ``path`` that intersect ``bbox``, as segments (``roads``: as the user named it)."""
    frame = _read(path)
    lines = frame[frame.geometry.geom_type.isin(["LineString", "MultiLineString"])]
    if len(frame) and lines.empty:
        raise RoadSourceError(f"{roads!r} has no LineString geometries (found {sorted(set(frame.geom_type))})")
    lines = lines.explode(index_parts=False, ignore_index=True)
    lines = lines[lines.intersects(box(*bbox.as_list()))].reset_index(drop=True)
    if "segment_id" in lines:
        segment_id = lines["segment_id"].astype(str)
    elif "osm_way_id" in lines:
        segment_id = "osm:" + lines["osm_way_id"].astype(str) + ":" + lines.groupby("osm_way_id").cumcount().astype(str)
    else:
        segment_id = pd.Series([f"seg:{i}" for i in range(len(lines))])
    segments = gpd.GeoDataFrame(
        {
            "segment_id": segment_id.to_numpy(),
            "osm_way_id": pd.array(lines["osm_way_id"] if "osm_way_id" in lines else [None] * len(lines), dtype="Int64"),
            "highway": lines["highway"].astype("string") if "highway" in lines else pd.array([None] * len(lines), dtype="string"),
            "name": lines["name"].astype("string") if "name" in lines else pd.array([None] * len(lines), dtype="string"),
            "length_m": [_GEOD.geometry_length(g) for g in lines.geometry],
        },
        geometry=lines.geometry.to_numpy(),
        crs="EPSG:4326",
    )
    if segments["segment_id"].duplicated().any():
        raise RoadSourceError(f"{roads!r}: segment_id values are not unique")
    return segments
