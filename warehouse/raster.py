"""A GeoTIFF of image coverage and label shares on a metric grid (``coverage.tif``).

Grid: square cells of ``cell_size_m`` metres in the run's metric CRS (its UTM zone), north up,
the origin snapped to whole multiples of the cell size so grids of neighbouring runs line up.
Bands, all float32 with NaN where a cell has no image:

1. ``image_count``: images in the cell (matched or not);
2. one band per attribute and class, ``<attribute>=<class>``: the share of the cell's images
   predicted as that class (shares of one attribute add up to 1 in every covered cell).

Band names are stored as band descriptions (GDAL/QGIS show them) and as band tags
``attribute``/``class``.

"No images" and "outside the area" differ: the file has an internal per-dataset mask
(``rasterio``'s ``read_masks``, GDAL's mask band) that is 255 in the area of the run (cells a road
segment passes through or an image lies in) and 0 outside it; inside the area, NaN means a road
with no image. ``coverage.qml`` beside the file styles band 1 as a pseudocolour ramp of the image
count for QGIS.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import duckdb
import numpy as np
import pyarrow.compute as pc
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin

from contracts.files import write_atomic
from contracts.errors import CityAuditError
from warehouse.defaults import DEFAULT_CELL_SIZE_M

MAX_CELLS = 25_000_000
#: Rows read from the database at a time.
BATCH_ROWS = 65_536


class RasterTooLargeError(CityAuditError, ValueError):
    """The grid would have too many cells for the chosen cell size."""


def band_names(attributes: Mapping[str, Sequence[str]]) -> list[str]:
    """The band descriptions in band order: ``image_count`` then ``<attribute>=<class>``."""
    return ["image_count"] + [f"{a}={c}" for a, classes in attributes.items() for c in classes]


def _equal(column, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False)


def write_coverage_raster(con: duckdb.DuckDBPyConnection, path: str | os.PathLike, attributes: Mapping[str, Sequence[str]],
                          metric_crs: str, cell_size_m: float = DEFAULT_CELL_SIZE_M) -> Path:
    """Write the coverage/share GeoTIFF of a built audit database; returns its path.

    The grid covers every image and segment. Raises ``RasterTooLargeError`` past ``MAX_CELLS``.
    """
    extent = con.execute("""
        WITH g AS (
            SELECT ST_Transform(geometry, 'EPSG:4326', $crs, always_xy := true) AS g FROM images
            UNION ALL SELECT ST_Transform(geometry, 'EPSG:4326', $crs, always_xy := true) FROM segments
        )
        SELECT min(ST_XMin(g)), min(ST_YMin(g)), max(ST_XMax(g)), max(ST_YMax(g)) FROM g
    """, {"crs": metric_crs}).fetchone()
    if extent[0] is None:
        extent = (0.0, 0.0, cell_size_m, cell_size_m)
    x0 = math.floor(extent[0] / cell_size_m) * cell_size_m
    y0 = math.floor(extent[1] / cell_size_m) * cell_size_m
    width = max(1, math.ceil((extent[2] - x0) / cell_size_m + 1e-9))
    height = max(1, math.ceil((extent[3] - y0) / cell_size_m + 1e-9))
    if width * height > MAX_CELLS:
        raise RasterTooLargeError(f"a {cell_size_m:g} m grid would have {width * height:,} cells; use a larger cell size")
    y_top = y0 + height * cell_size_m
    names = band_names(attributes)
    bands = np.zeros((len(names), height, width), dtype=np.float64)

    def cells(batch) -> tuple[np.ndarray, np.ndarray]:
        x, y = batch.column("x").to_numpy(), batch.column("y").to_numpy()
        col = np.clip(((x - x0) // cell_size_m).astype(int), 0, width - 1)
        row = np.clip(((y_top - y) // cell_size_m).astype(int), 0, height - 1)
        return row, col

    # read batch by batch (memory does not grow with the images): the images once each, then their predictions
    for batch in con.execute("""
        SELECT ST_X(g) AS x, ST_Y(g) AS y
        FROM (SELECT ST_Transform(geometry, 'EPSG:4326', $crs, always_xy := true) AS g FROM images)
    """, {"crs": metric_crs}).to_arrow_reader(BATCH_ROWS):
        np.add.at(bands[0], cells(batch), 1)
    totals = {attribute: np.zeros((height, width)) for attribute in attributes}
    band_of = {}
    index = 1
    for attribute, classes in attributes.items():
        for cls in classes:
            band_of[(attribute, cls)] = index
            index += 1
    for batch in con.execute("""
        SELECT ST_X(i.g) AS x, ST_Y(i.g) AS y, p.attribute, p.label
        FROM (SELECT image_id, ST_Transform(geometry, 'EPSG:4326', $crs, always_xy := true) AS g FROM images) i
        JOIN predictions p USING (image_id)
    """, {"crs": metric_crs}).to_arrow_reader(BATCH_ROWS):
        row, col = cells(batch)
        for attribute, classes in attributes.items():
            of_attribute = _equal(batch.column("attribute"), attribute)
            if not of_attribute.any():
                continue
            np.add.at(totals[attribute], (row[of_attribute], col[of_attribute]), 1)
            for cls in classes:
                hit = of_attribute & _equal(batch.column("label"), cls)
                np.add.at(bands[band_of[(attribute, cls)]], (row[hit], col[hit]), 1)
    for (attribute, cls), number in band_of.items():
        total = totals[attribute]
        with np.errstate(invalid="ignore", divide="ignore"):
            bands[number] = np.where(total > 0, bands[number] / total, np.nan)
    area = bands[0] > 0
    lines = con.execute("SELECT ST_AsWKB(ST_Transform(geometry, 'EPSG:4326', $crs, always_xy := true)) FROM segments",
                        {"crs": metric_crs}).fetchall()
    transform = from_origin(x0, y_top, cell_size_m, cell_size_m)
    if lines:
        area |= rasterize(shapely.from_wkb([bytes(r[0]) for r in lines]), out_shape=(height, width), transform=transform,
                          all_touched=True, fill=0, default_value=1, dtype="uint8").astype(bool)
    bands[0][bands[0] == 0] = np.nan
    path = Path(path)
    profile = dict(driver="GTiff", width=width, height=height, count=len(names), dtype="float32", crs=metric_crs,
                   transform=transform, nodata=float("nan"), compress="deflate")
    def write(partial: Path) -> None:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(partial, "w", **profile) as dst:
            dst.write(bands.astype(np.float32))
            dst.write_mask(np.where(area, 255, 0).astype(np.uint8))
            dst.update_tags(cell_size_m=f"{cell_size_m:g}", bands=";".join(names),
                            description="image_count and per-class shares of predicted labels per cell; "
                                        "mask 0 = outside the area, NaN inside = road cell without images")
            for number, name in enumerate(names, start=1):
                dst.set_band_description(number, name)
                attribute, _, cls = name.partition("=")
                dst.update_tags(number, attribute=attribute if cls else "", **({"class": cls} if cls else {}))

    write_atomic(path, write)
    write_coverage_style(path.with_suffix(".qml"), float(np.nanmax(bands[0])) if area.any() and np.isfinite(bands[0]).any() else 1.0)
    return path


def write_coverage_style(path: str | os.PathLike, max_count: float) -> Path:
    """A QGIS ``.qml`` beside the GeoTIFF: band 1 (image count) as a pseudocolour ramp from 1 to ``max_count``."""
    import xml.etree.ElementTree as ET

    max_count = max(max_count, 1.0)
    ramp = [(1.0, "#fde725"), ((1 + max_count) / 2, "#21918c"), (max_count, "#440154")]  # viridis, few = light
    root = ET.Element("qgis", version="3.22.0", styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band="1", opacity="1",
                             alphaBand="-1", classificationMin="1", classificationMax=f"{max_count:g}")
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader", colorRampType="INTERPOLATED",
                           classificationMode="1", clip="0", minimumValue="1", maximumValue=f"{max_count:g}")
    for value, colour in ramp:
        ET.SubElement(shader, "item", alpha="255", value=f"{value:g}", color=colour, label=f"{value:g} images")
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0")
    ET.indent(root)
    path = Path(path)
    path.write_text("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n",
                    encoding="utf-8")
    return path
