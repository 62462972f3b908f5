"""The run report ``report.md``: coverage, matching quality, dominant labels, and the outputs.

Plain Markdown, readable as text and rendered by any Markdown viewer (GitHub, QGIS's metadata
panel does not, a browser extension does). Numbers come from ``audit.duckdb`` through
``sql/report_*.sql``.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import duckdb

from contracts.files import write_text_atomic
from contracts.notices import UNTRAINED_NOTE
from warehouse.db import sql

OUTPUT_HELP = {
    "segments": "GeoParquet 1.1 road segments, one column group per attribute (QGIS with GDAL >= 3.8 + Arrow, DuckDB, geopandas)",
    "images": "GeoParquet 1.1 image points with their match and labels",
    "geopackage": "the same two layers (segments, images) as GeoPackage: opens in every QGIS",
    "styles": "QGIS .qml styles, one per attribute, and images.qml for the images layer (Layer Properties > Symbology > Style > Load Style)",
    "raster": "GeoTIFF: band 1 image count per cell, then the share of each attribute class per cell; masked outside the area; "
              "coverage.qml beside it styles the count",
    "map_png": "map picture: one panel per attribute, scale bar, north arrow, legend, credits",
    "map_html": "interactive map, works offline (open from disk in a browser; the optional background needs the web)",
    "database": "DuckDB database with all tables and the planner views (docs/planner-outputs.md)",
    "segment_tiles": "segments partitioned by z14 tile (tile=<z>_<x>_<y>/<run>.parquet)",
    "image_tiles": "images partitioned by z14 tile",
}


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def write_report(con: duckdb.DuckDBPyConnection, path: str | os.PathLike, *, run_id: str, model_trained: bool | None,
                 max_distance_m: float, outputs: Mapping[str, str], attribution: Sequence[str] = ()) -> Path:
    """Write ``report.md`` for a built audit database; returns its path.

    ``attribution``: the run's credit lines, listed under "Credits" (keep them with anything published).
    """
    cov = con.execute(sql("report_coverage")).df().iloc[0]
    labels = con.execute(sql("report_labels")).df()
    unmatched = con.execute(sql("report_unmatched")).df()
    share_km = cov["road_km_with_images"] / cov["road_km"] * 100 if cov["road_km"] else 0.0
    lines = ["# city-audit run report", "", f"- run id: `{run_id}`",
             f"- written: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]
    if model_trained is False:
        lines += [f"> **{UNTRAINED_NOTE}** They test the pipeline and are not results.", ""]
    if not int(cov["images"]) or not int(cov["segments"]):
        missing = " and ".join(w for w, n in (("no images", cov["images"]), ("no road segments", cov["segments"])) if not int(n))
        lines += [f"> **Empty run: {missing}.** Every output is written but the maps have nothing to draw. Check the",
                  "> bbox, the image source and its filters, the roads source, and the failures in `run.json`.", ""]
    lines += ["## Coverage", "", "| what | value |", "| --- | --- |",
              f"| images | {_fmt(int(cov['images']))} |",
              f"| matched to a road segment (within {max_distance_m:g} m) | {_fmt(int(cov['matched_images']))} |",
              f"| not matched | {_fmt(int(cov['unmatched_images']))} |",
              f"| road segments | {_fmt(int(cov['segments']))} |",
              f"| segments with images | {_fmt(int(cov['segments_with_images']))} |",
              f"| road length | {_fmt(float(cov['road_km']), 2)} km |",
              f"| road length with images | {_fmt(float(cov['road_km_with_images']), 2)} km ({share_km:.0f} %) |",
              "", "## Matching", "",
              f"- distance image to segment: median {_fmt(cov['median_distance_m'])} m, 90th percentile {_fmt(cov['p90_distance_m'])} m",
              f"- heading difference (non-panoramic images with a compass angle, {int(cov['matches_with_heading'])}): "
              f"median {_fmt(cov['median_heading_difference_deg'])} degrees", ""]
    if len(unmatched):
        lines += ["| why not matched | images |", "| --- | --- |"]
        lines += [f"| {r.reason} | {r.images} |" for r in unmatched.itertuples()]
        lines += [""]
    lines += ["## Dominant labels", "",
              "Segments per dominant label; `mean share` is the average share of the segment's images that agree.", ""]
    for attribute, part in labels.groupby("attribute", sort=False):
        lines += [f"### {attribute}", "", "| label | segments | km | mean share | images |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r.label} | {r.segments} | {r.road_km:.2f} | {r.mean_share:.2f} | {int(r.images)} |" for r in part.itertuples()]
        lines += [""]
    lines += ["## Outputs", "", "| file | what |", "| --- | --- |"]
    for name, target in outputs.items():
        lines.append(f"| `{Path(target).name}` | {OUTPUT_HELP.get(name, name)} |")
    lines += ["", "How to open each output in QGIS and DuckDB: `docs/planner-outputs.md`.", ""]
    if attribution:
        lines += ["## Credits", "", "Keep these lines with anything you publish from this run:", ""]
        lines += [f"- {line}" for line in attribution] + [""]
    return write_text_atomic(path, "\n".join(lines))
