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
from contracts.sample import SAMPLE_IMAGES, SAMPLE_SEGMENTS, sample_extent_text
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


#: What each image source says when it found no image in the bbox (``{extent}``: the bundled sample's).
NO_IMAGES_BECAUSE = {
    "sample": f"the bundled sample's {SAMPLE_IMAGES} images lie within {{extent}} (Stuttgart-West) only, and none in this bbox",
    "mapillary": "Mapillary has no image in this bbox that passed the filters (no coverage, or --start/--end, "
                 "--max-images and the other Mapillary options excluded them)",
    "folder": "no image of the folder lies inside this bbox (check its lon/lat columns against the bbox)",
}
NO_ROADS_BECAUSE = {
    "sample": f"the bundled sample's {SAMPLE_SEGMENTS} road segments lie within {{extent}} (Stuttgart-West) only, "
              "and none in this bbox",
}


def empty_run_causes(con: duckdb.DuckDBPyConnection, *, images: int, segments: int, matched: int,
                     max_distance_m: float, sources: Mapping[str, str] | None = None) -> list[str]:
    """Why a run has nothing to map, one sentence per cause; empty when images were matched to roads.

    ``images`` / ``segments`` / ``matched``: the run's counts; ``sources``: ``{"images": <source>,
    "roads": <'sample' or the roads file>}`` as the run was configured (names the source in each cause).
    The run's failures (the ``failures`` table) are summarised when no image is left.
    """
    sources = dict(sources or {})
    extent = sample_extent_text()
    image_source, road_source = sources.get("images"), sources.get("roads")
    causes = []
    if not images:
        failed = con.execute(sql("report_failures")).fetchall()
        if failed:
            total = con.execute("SELECT count(*) FROM failures").fetchone()[0]
            top = "; ".join(f"{n} x {stage}: {reason}" for stage, reason, n in failed)
            causes.append(f"no images: all {total:,} discovered item(s) failed (most frequent: {top}); "
                          "see `failures` in `run.json`")
        else:
            because = NO_IMAGES_BECAUSE.get(image_source or "", "the image source found no image in this bbox")
            causes.append(f"no images from source {image_source or 'unknown'}: {because.format(extent=extent)}")
    if not segments:
        if road_source in NO_ROADS_BECAUSE:
            because = NO_ROADS_BECAUSE[road_source].format(extent=extent)
        else:
            because = (f"the roads file {Path(road_source).name!r} has no road line of the selected classes in this bbox"
                       if road_source else "the roads source has no road line in this bbox")
        causes.append(f"no road segments from roads {road_source or 'unknown'}: {because}")
    if images and segments and not matched:
        causes.append(f"none of the {images:,} images lies within {max_distance_m:g} m of a road segment "
                      "(see `unmatched_images` in `audit.duckdb`)")
    return causes


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def write_report(con: duckdb.DuckDBPyConnection, path: str | os.PathLike, *, run_id: str, model_trained: bool | None,
                 max_distance_m: float, outputs: Mapping[str, str], attribution: Sequence[str] = (),
                 sources: Mapping[str, str] | None = None) -> Path:
    """Write ``report.md`` for a built audit database; returns its path.

    ``attribution``: the run's credit lines, listed under "Credits" (keep them with anything published).
    ``sources``: the run's image and road sources (``empty_run_causes``), named when the run is empty.
    """
    cov = con.execute(sql("report_coverage")).df().iloc[0]
    labels = con.execute(sql("report_labels")).df()
    unmatched = con.execute(sql("report_unmatched")).df()
    share_km = cov["road_km_with_images"] / cov["road_km"] * 100 if cov["road_km"] else 0.0
    lines = ["# city-audit run report", "", f"- run id: `{run_id}`",
             f"- written: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]
    if model_trained is False:
        lines += [f"> **{UNTRAINED_NOTE}** They test the pipeline and are not results.", ""]
    causes = empty_run_causes(con, images=int(cov["images"]), segments=int(cov["segments"]),
                              matched=int(cov["matched_images"]), max_distance_m=max_distance_m, sources=sources)
    if causes:
        title = "Empty run" if not int(cov["images"]) or not int(cov["segments"]) else "Nothing matched"
        lines += [f"> **{title}.** Every output is written but the maps have nothing to draw, because:", ">"]
        lines += [f"> - {cause}" for cause in causes] + [""]
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
