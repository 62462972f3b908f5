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
import math
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
from warehouse.frames import image_batches, image_count

TILE_ZOOM = 14
ROW_GROUP_SIZE = 16_384
#: DuckDB's memory while it sorts the images into Hilbert order for ``images.parquet`` (it spills to disk past it).
SORT_MEMORY = "256MB"


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
            _write_layer(frame, partial, name, first=number == 0, metadata=metadata)

    return write_atomic(path, write)


def _write_layer(frame: gpd.GeoDataFrame, path: Path, name: str, *, first: bool = False, append: bool = False,
                 metadata: dict[str, str] | None = None) -> None:
    """One layer (or, ``append``, more rows of it) of the GeoPackage of ``write_geopackage``."""
    options = {"dataset_options": {"VERSION": GEOPACKAGE_VERSION}} if first else {}
    if first and metadata:
        options["dataset_metadata"] = dict(metadata)
    if append:
        options["append"] = True
    frame.to_file(path, layer=name, driver="GPKG", engine="pyogrio", **options)


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


def _plain(table: pa.Table) -> pa.Table:
    """``table`` without schema or field metadata (a scratch file DuckDB reads as plain columns)."""
    return pa.Table.from_arrays(table.columns, schema=pa.schema([pa.field(f.name, f.type) for f in table.schema]))


def _conform(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """``batch`` (read back by DuckDB) with the columns and types of ``schema``."""
    arrays = []
    for f in schema:
        column = batch.column(batch.schema.get_field_index(f.name))
        arrays.append(pa.nulls(len(column), f.type) if pa.types.is_null(f.type) else column.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class _ImagesParquet:
    """``images.parquet`` written as ``write_geoparquet`` writes the whole frame, from batches in image_id order.

    Each batch goes through geopandas' GeoParquet writer (so columns, types and ``geo`` metadata are
    geopandas' own) into a scratch Parquet file with its Hilbert distance (over the bounds of all
    images, as ``hilbert_distance`` of the whole frame) and position; ``finish`` lets DuckDB sort the
    scratch file by (distance, position) -- the stable argsort of ``write_geoparquet`` -- within
    ``SORT_MEMORY`` and writes the rows in row groups of ``ROW_GROUP_SIZE``.
    """

    def __init__(self, path: Path, bounds: Sequence[float] | None):
        self.path, self.bounds = Path(path), bounds
        self.scratch = self.path.parent / f".{self.path.name}.unsorted-{os.getpid()}"
        self.writer, self.schema, self.rows = None, None, 0

    def add(self, frame: gpd.GeoDataFrame) -> None:
        table = _geoparquet_table(frame.reset_index(drop=True))
        if self.schema is None:
            self.schema = table.schema
            if self.bounds is not None:  # the file's bbox: that of all images, not of the first batch
                geo = json.loads(self.schema.metadata[b"geo"])
                geo["columns"][geo["primary_column"]]["bbox"] = [float(v) for v in self.bounds]
                self.schema = self.schema.with_metadata({**self.schema.metadata, b"geo": json.dumps(geo).encode()})
        distance = (frame.hilbert_distance(total_bounds=self.bounds).to_numpy() if len(frame) and self.bounds is not None
                    else np.zeros(len(frame), np.int64))
        plain = _plain(table).append_column("_h", pa.array(np.asarray(distance, np.int64)))
        plain = plain.append_column("_pos", pa.array(np.arange(self.rows, self.rows + len(frame), dtype=np.int64)))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.scratch, plain.schema)
        self.writer.write_table(plain)
        self.rows += len(frame)

    def finish(self) -> Path:
        self.writer.close()
        try:
            def write(partial: Path) -> None:
                with duckdb.connect() as con, pq.ParquetWriter(partial, self.schema, compression="zstd") as out:
                    con.execute(f"SET memory_limit = '{SORT_MEMORY}'")
                    con.execute("SET temp_directory = $t", {"t": str(self.path.parent / f".{self.path.name}.tmp")})
                    con.execute("SET threads = 2")
                    reader = con.execute("SELECT * EXCLUDE (_h, _pos) FROM read_parquet($f) ORDER BY _h, _pos",
                                         {"f": str(self.scratch)}).to_arrow_reader(ROW_GROUP_SIZE)
                    pending, held = [], 0
                    for batch in reader:
                        pending.append(_conform(batch, self.schema))
                        held += batch.num_rows
                        while held >= ROW_GROUP_SIZE:
                            whole = pa.concat_tables(pending)
                            out.write_table(whole.slice(0, ROW_GROUP_SIZE), row_group_size=ROW_GROUP_SIZE)
                            rest = whole.slice(ROW_GROUP_SIZE)
                            pending, held = [rest], rest.num_rows
                    if held or not self.rows:
                        out.write_table(pa.concat_tables(pending) if pending else self.schema.empty_table(),
                                        row_group_size=ROW_GROUP_SIZE)

            self.path.parent.mkdir(parents=True, exist_ok=True)
            return write_atomic(self.path, write)
        finally:
            self.scratch.unlink(missing_ok=True)
            shutil.rmtree(self.path.parent / f".{self.path.name}.tmp", ignore_errors=True)


def export_run(segments: gpd.GeoDataFrame, images, out: str | os.PathLike, *,
               geopackage: bool = True, tiles_part: str | None = None,
               metadata: dict[str, str] | None = None, attributes: Sequence[str] | None = None,
               map_images: int | None = None) -> dict[str, str]:
    """Write ``segments.parquet``, ``images.parquet`` and (``geopackage``) ``segments.gpkg`` into ``out``
    from the frame of ``segments_frame`` and the images: a frame of ``images_frame``, or an open audit
    database (with ``attributes``), whose images are then read and written batch by batch
    (``image_batches``): publishing holds one batch, whatever the image count.

    ``metadata`` goes into the GeoPackage's dataset metadata. With ``tiles_part`` also ``tiles/segments/tile=*/<tiles_part>.parquet``
    and the same for images (the tiles of the images are written from the whole images table).
    Returns the written paths by name; from a database, with ``map_images`` (a count), also
    ``"map_images"``: the images for the maps, every k-th in image_id order past that count (a frame).
    """
    out = Path(out)
    outputs = {"segments": str(write_geoparquet(segments, out / "segments.parquet"))}
    if isinstance(images, gpd.GeoDataFrame):
        outputs["images"] = str(write_geoparquet(images, out / "images.parquet"))
        if geopackage:
            outputs["geopackage"] = str(write_geopackage({"segments": segments, "images": images}, out / "segments.gpkg",
                                                            metadata=metadata))
        if tiles_part:
            write_tiles(segments, out / "tiles" / "segments", tiles_part)
            write_tiles(images, out / "tiles" / "images", tiles_part)
            outputs.update(segment_tiles=str(out / "tiles" / "segments"), image_tiles=str(out / "tiles" / "images"))
        return outputs
    con, attributes = images, list(attributes)
    total = image_count(con)
    bounds = (con.execute("SELECT min(lon), min(lat), max(lon), max(lat) FROM images").fetchone() if total else None)
    step = max(1, math.ceil(total / map_images)) if map_images else 0
    sample, tiles = [], []
    parquet = _ImagesParquet(out / "images.parquet", bounds)

    def stream(gpkg: Path | None) -> None:
        if gpkg is not None:
            _write_layer(segments, gpkg, "segments", first=True, metadata=metadata)
        position = 0
        for number, batch in enumerate(image_batches(con, attributes)):
            parquet.add(batch)
            if gpkg is not None:
                _write_layer(batch, gpkg, "images", append=number > 0)
            if step:
                keep = (np.arange(position, position + len(batch)) % step) == 0
                sample.append(batch[keep] if step > 1 else batch)
            if tiles_part:
                tiles.append(batch)
            position += len(batch)

    if geopackage:
        outputs["geopackage"] = str(write_atomic(out / "segments.gpkg", stream))
    else:
        stream(None)
    outputs["images"] = str(parquet.finish())
    if tiles_part:
        whole = gpd.GeoDataFrame(pd.concat(tiles, ignore_index=True), crs="EPSG:4326")
        write_tiles(segments, out / "tiles" / "segments", tiles_part)
        write_tiles(whole, out / "tiles" / "images", tiles_part)
        outputs.update(segment_tiles=str(out / "tiles" / "segments"), image_tiles=str(out / "tiles" / "images"))
    if step:
        outputs["map_images"] = (sample[0] if len(sample) == 1
                                 else gpd.GeoDataFrame(pd.concat(sample, ignore_index=True), crs="EPSG:4326"))
    return outputs
