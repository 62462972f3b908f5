"""Publish a run's tables: GeoParquet 1.1, a GeoPackage copy and tile-partitioned GeoParquet.

``segments.parquet``: one row per road segment, one column group per attribute
(``weather_label``, ``weather_share``, ``weather_share_ci_low``, ``weather_label_counts`` ...),
plus ``n_images``. ``images.parquet``: one point per image with its match (or the reason it has
none) and one label/confidence pair per attribute. Both carry GeoParquet 1.1 ``geo`` metadata
(WKB, PROJJSON CRS, bbox covering). ``segments.gpkg`` holds the same two tables as layers
``segments`` and ``images`` for GIS software whose GDAL has no Parquet driver.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import duckdb
import geopandas as gpd
import mercantile
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import shapely

from contracts.files import write_atomic
from warehouse.db import sql

SEGMENT_GROUP = ("label", "share", "share_ci_low", "share_ci_high", "mean_confidence", "label_counts")
IMAGE_GROUP = ("label", "confidence")
TILE_ZOOM = 14
ROW_GROUP_SIZE = 16_384


def write_geoparquet(frame: gpd.GeoDataFrame, path: str | os.PathLike, row_group_size: int = ROW_GROUP_SIZE) -> Path:
    """Write GeoParquet 1.1 (bbox covering column, CRS) to a temporary name, then rename.

    Rows are sorted along a Hilbert curve and written in row groups of ``row_group_size`` so
    readers (GDAL >= 3.9, DuckDB) can skip row groups outside a bbox in large files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(frame) > 1:
        frame = frame.iloc[np.argsort(frame.hilbert_distance().to_numpy(), kind="stable")]
    return write_atomic(path, lambda partial: frame.to_parquet(
        partial, index=False, schema_version="1.1.0", write_covering_bbox=True, compression="zstd",
        row_group_size=row_group_size))


#: GeoPackage version written: 1.2 opens without a warning in QGIS 3.22 / GDAL 3.6 (1.4 does not).
GEOPACKAGE_VERSION = "1.2"


def write_geopackage(layers: dict[str, gpd.GeoDataFrame], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write each frame as a layer of one GeoPackage 1.2 (through pyogrio), atomically.

    ``metadata`` (e.g. ``{"ATTRIBUTION": ...}``) is stored as dataset metadata (GDAL's
    ``gpkg_metadata`` tables; ``ogrinfo`` and QGIS show it).
    """
    def write(partial: Path) -> None:
        for number, (name, frame) in enumerate(layers.items()):
            options = {"dataset_options": {"VERSION": GEOPACKAGE_VERSION}} if number == 0 else {}
            if number == 0 and metadata:
                options["dataset_metadata"] = dict(metadata)
            frame.to_file(partial, layer=name, driver="GPKG", engine="pyogrio", **options)

    return write_atomic(path, write)


def _wide(long: pd.DataFrame, keys: list[str], group: Sequence[str], attributes: Sequence[str]) -> pd.DataFrame:
    """One row per key, columns ``<attribute>_<field>`` in attribute order (``DataFrame.pivot``)."""
    base = long[keys].drop_duplicates(subset=keys[0]).set_index(keys[0])
    wide = long.dropna(subset=["attribute"]).pivot(index=keys[0], columns="attribute", values=list(group))
    columns = pd.MultiIndex.from_tuples([(field, attribute) for attribute in attributes for field in group])
    wide = wide.reindex(columns=columns).reindex(base.index)
    wide = wide.astype({column: long[column[0]].dtype for column in columns})  # pivot of mixed fields gives object
    wide.columns = [f"{attribute}_{field}" for field, attribute in columns]
    return base.join(wide).reset_index()


def segments_frame(con: duckdb.DuckDBPyConnection, attributes: Sequence[str]) -> gpd.GeoDataFrame:
    """Segments with their per-attribute aggregates, one row per segment (EPSG:4326)."""
    long = con.execute(sql("export_segments")).df()
    keys = ["segment_id", "osm_way_id", "highway", "name", "length_m", "wkb"]
    wide = _wide(long, keys, SEGMENT_GROUP, attributes)
    totals = long.groupby("segment_id").agg(n_images=("n_images", "max"), first_captured_at=("first_captured_at", "min"),
                                            last_captured_at=("last_captured_at", "max"))
    wide = wide.join(totals, on="segment_id")
    wide["n_images"] = wide["n_images"].fillna(0).astype("int32")
    return gpd.GeoDataFrame(wide.drop(columns="wkb"), geometry=gpd.GeoSeries.from_wkb(wide["wkb"].map(bytes)), crs="EPSG:4326")


def images_frame(con: duckdb.DuckDBPyConnection, attributes: Sequence[str]) -> gpd.GeoDataFrame:
    """Images with their match (or unmatched reason) and per-attribute labels, one row per image."""
    long = con.execute(sql("export_images")).df()
    keys = ["image_id", "source", "sequence_id", "captured_at", "compass_angle", "is_pano", "camera_type", "lon", "lat",
            "width", "height", "path", "sha256", "wkb", "segment_id", "distance_m", "heading_difference_deg",
            "unmatched_reason"]
    wide = _wide(long, keys, IMAGE_GROUP, attributes)
    methods = long.dropna(subset=["attribute"]).groupby("image_id")["method"].agg(lambda m: ",".join(sorted(set(m))))
    wide["method"] = wide["image_id"].map(methods)
    return gpd.GeoDataFrame(wide.drop(columns="wkb"), geometry=gpd.GeoSeries.from_wkb(wide["wkb"].map(bytes)), crs="EPSG:4326")


def tile_keys(frame: gpd.GeoDataFrame, zoom: int = TILE_ZOOM) -> pd.Series:
    """The web-mercator tile ``<zoom>_<x>_<y>`` holding each feature's midpoint (points: the point).

    A segment always lands in one tile, whichever worker wrote it, so partitions from several
    workers never split a segment.
    """
    if frame.empty:
        return pd.Series([], dtype="string", index=frame.index)
    geoms = frame.geometry.to_numpy()
    lines = shapely.get_type_id(geoms) == 1  # LineString: its midpoint along the line; anything else: a point on it
    mid = shapely.point_on_surface(geoms)
    mid[lines] = shapely.line_interpolate_point(geoms[lines], 0.5, normalized=True)
    tiles = [mercantile.tile(x, y, zoom, truncate=True) for x, y in zip(shapely.get_x(mid), shapely.get_y(mid))]
    return pd.Series([f"{t.z}_{t.x}_{t.y}" for t in tiles], index=frame.index, dtype="string")


def _geoparquet_table(frame: gpd.GeoDataFrame) -> pa.Table:
    """``frame`` as the Arrow table ``write_geoparquet`` writes (same columns, types and ``geo`` metadata).

    Goes through geopandas' own GeoParquet writer into memory, so the schema and the GeoParquet 1.1
    metadata (WKB encoding, PROJJSON CRS, bbox covering column) are exactly those of ``segments.parquet``.
    """
    buffer = pa.BufferOutputStream()
    frame.to_parquet(buffer, index=False, schema_version="1.1.0", write_covering_bbox=True)
    return pq.read_table(pa.BufferReader(buffer.getvalue()))


def write_tiles(frame: gpd.GeoDataFrame, folder: str | os.PathLike, part_name: str, zoom: int = TILE_ZOOM) -> list[Path]:
    """Hive-partitioned GeoParquet: ``folder/tile=<z>_<x>_<y>/<part_name>.parquet``, one file per tile.

    Written by ``pyarrow.dataset.write_dataset`` (hive flavour, partition column ``tile`` in the
    path only) with the GeoParquet 1.1 ``geo`` metadata of ``write_geoparquet``, except the
    optional file ``bbox``: one schema serves every partition, so a file-wide bbox would be the
    whole frame's, not the file's; the per-row covering column ``bbox`` is kept. Rows are in
    Hilbert order of the whole frame within each tile.

    Each worker writes its own ``part_name`` (e.g. its run id), so outputs of several workers
    merge by copying folders together; readers glob ``folder/*/*.parquet``. A rerun with the same
    ``part_name`` replaces that part everywhere: its files in tiles it no longer covers are
    removed, other parts are left alone. The part is written into a temporary folder beside
    ``folder`` and moved in file by file. Returns the written files, sorted.
    """
    folder = Path(folder)
    keys = tile_keys(frame, zoom)
    if len(frame) > 1:
        order = np.lexsort((frame.hilbert_distance().to_numpy(), keys.to_numpy(dtype=object)))
        frame, keys = frame.iloc[order], keys.iloc[order]
    table = _geoparquet_table(frame.reset_index(drop=True))
    geo = json.loads(table.schema.metadata[b"geo"])
    for column in geo["columns"].values():
        column.pop("bbox", None)
    table = table.replace_schema_metadata({**table.schema.metadata, b"geo": json.dumps(geo).encode()})
    table = table.append_column("tile", pa.array(keys.to_numpy(dtype=object), pa.string()))
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f".{folder.name}.partial-{part_name}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        if len(table):
            ds.write_dataset(table, scratch, format="parquet", partitioning=["tile"], partitioning_flavor="hive",
                             basename_template=f"{part_name}-{{i}}.parquet", preserve_order=True,
                             max_rows_per_group=ROW_GROUP_SIZE, min_rows_per_group=min(ROW_GROUP_SIZE, len(table)),
                             file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
                             existing_data_behavior="error")
        for old in folder.glob(f"tile=*/{part_name}.parquet"):  # this part's previous files: none may survive
            old.unlink()
        written = []
        for part in sorted(scratch.glob("tile=*/*.parquet")):  # one file per tile: no size limit is set
            target = folder / part.parent.name / f"{part_name}.parquet"
            target.parent.mkdir(exist_ok=True)
            os.replace(part, target)
            written.append(target)
        for empty in folder.glob("tile=*"):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written


def export_run(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, out: str | os.PathLike, *,
               geopackage: bool = True, tiles_part: str | None = None,
               metadata: dict[str, str] | None = None) -> dict[str, str]:
    """Write ``segments.parquet``, ``images.parquet`` and (``geopackage``) ``segments.gpkg`` into ``out``
    from the frames of ``segments_frame`` and ``images_frame``.

    ``metadata`` goes into the GeoPackage's dataset metadata. With ``tiles_part`` also ``tiles/segments/tile=*/<tiles_part>.parquet`` and the same for images.
    Returns the written paths by name.
    """
    out = Path(out)
    outputs = {"segments": str(write_geoparquet(segments, out / "segments.parquet")),
               "images": str(write_geoparquet(images, out / "images.parquet"))}
    if geopackage:
        outputs["geopackage"] = str(write_geopackage({"segments": segments, "images": images}, out / "segments.gpkg",
                                                        metadata=metadata))
    if tiles_part:
        write_tiles(segments, out / "tiles" / "segments", tiles_part)
        write_tiles(images, out / "tiles" / "images", tiles_part)
        outputs.update(segment_tiles=str(out / "tiles" / "segments"), image_tiles=str(out / "tiles" / "images"))
    return outputs
