"""Everything a planner opens after a run, written from ``audit.duckdb`` in one call.

``publish_run`` writes the GeoParquet files and the GeoPackage (``warehouse.export``), a QGIS
style per attribute (``warehouse.styles``), the coverage GeoTIFF (``warehouse.raster``), the PNG
and HTML maps (``warehouse.maps``, ``warehouse.map_html``) and the run report (``warehouse.report``).
Every published artefact carries the same credit lines (``attribution``, the list ``run.json`` holds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from contracts.notices import UNTRAINED
from warehouse.attribution import credit_text, default_attribution
from warehouse.build import limit_memory, memory_errors
from warehouse.db import connect
from warehouse.export import export_run
from warehouse.frames import MAP_MAX_IMAGES, image_count, segments_frame
from warehouse.map_html import write_map_html
from warehouse.maps import write_map_png
from warehouse.raster import DEFAULT_CELL_SIZE_M, write_coverage_raster
from warehouse.report import write_report
from warehouse.styles import embed_styles_in_geopackage, write_styles

DEFAULT_MAP_ATTRIBUTE = "weather"


def publish_run(database: str | os.PathLike, out: str | os.PathLike, attributes: Mapping[str, Sequence[str]], *,
                metric_crs: str, run_id: str, model_trained: bool | None = None,
                max_distance_m: float = 25.0, map_attribute: str = DEFAULT_MAP_ATTRIBUTE,
                cell_size_m: float = DEFAULT_CELL_SIZE_M, partition_by_tile: bool = False,
                attribution: Sequence[str] | None = None, image_store: str | os.PathLike | None = None,
                map_images: int = MAP_MAX_IMAGES, sources: Mapping[str, str] | None = None) -> dict[str, str]:
    """Write all planner outputs of a built audit database into ``out``; returns ``{name: path}``.

    ``attributes`` maps each attribute to its classes (in class order: it fixes the colours).
    ``partition_by_tile`` also writes ``tiles/{segments,images}/tile=<z14>/<run_id>.parquet``.
    ``attribution``: the run's credit lines (those of ``run.json``), put on the maps, the report and the
    GeoPackage metadata; without it they are derived from the database (``default_attribution``).
    ``image_store``: the run's image folder, which ends up beside ``map.html`` (default ``out/images``):
    the interactive map shows thumbnails from it.
    ``sources``: ``{"images": <imagery source>, "roads": <roads source>}``, named in the report of an empty run.
    ``map_images``: the most images ``map.png`` and ``map.html`` draw (every k-th in image_id order past it;
    their titles then say so); the GeoParquet files and the GeoPackage always hold every image. Images are
    read from the database batch by batch (``warehouse.frames.image_batches``): memory does not grow with them.
    """
    out = Path(out)
    if map_attribute not in attributes:
        map_attribute = next(iter(attributes))
    warning = f" ({UNTRAINED})" if model_trained is False else ""
    with memory_errors("publishing the run's outputs"), connect(database, read_only=True) as con:
        limit_memory(con)
        credits = list(attribution) if attribution is not None else default_attribution(con)
        untrained = model_trained is False
        segments = segments_frame(con, list(attributes))  # one row per road segment: the run's size, not its images'
        outputs = export_run(segments, con, out, tiles_part=run_id if partition_by_tile else None,
                             metadata={"ATTRIBUTION": credit_text(credits, "\n"), "RUN_ID": run_id,
                                       "MODEL_TRAINED": str(model_trained).lower()},
                             attributes=list(attributes), map_images=map_images)
        images = outputs.pop("map_images")  # all images, or every k-th past map_images: the maps' size is bounded
        total = image_count(con)
        shown = (f" ({len(images):,} of {total:,} images drawn)" if len(images) < total else "")
        outputs["styles"] = str(out / "styles")
        write_styles(out / "styles", attributes, images_attribute=map_attribute)
        embed_styles_in_geopackage(outputs["geopackage"], "segments", attributes, default=map_attribute,
                                   images_layer="images")
        outputs["raster"] = str(write_coverage_raster(con, out / "coverage.tif", attributes, metric_crs, cell_size_m))
        outputs["map_png"] = str(write_map_png(segments, images, out / "map.png", attributes, metric_crs,
                                               title=f"Dominant label per road segment, by attribute{shown}",
                                               attribution=credits, untrained=untrained))
        outputs["map_html"] = str(write_map_html(segments, images, out / "map.html", attributes, map_attribute,
                                                 title=f"city-audit {run_id}{warning}{shown}", attribution=credits,
                                                 untrained=untrained,
                                                 image_store=Path(image_store) if image_store else out / "images"))
        outputs["report"] = str(write_report(con, out / "report.md", run_id=run_id, model_trained=model_trained,
                                             max_distance_m=max_distance_m, attribution=credits,
                                             outputs={**outputs, "database": str(database)}, sources=sources))
    return outputs
