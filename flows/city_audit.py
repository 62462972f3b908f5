"""The ``city-audit`` Prefect flow: bbox -> images -> attributes -> roads -> maps.

Each task calls one function of ``geo``, ``classify`` or ``warehouse``; the flow only wires
them and records timings. Run it with ``city-audit run`` (the CLI calls this flow), or serve it
as a deployment (``city-audit serve``) and start runs with ``prefect deployment run``.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from classify.adapt import adapt_image_store
from classify.schema import ATTRIBUTES
from classify.stage import UNTRAINED_WARNING, classify_image_store
from geo.bbox import DEFAULT_MAX_AREA_KM2, BBox, parse_bbox
from geo.imagery import ImageCollection, collect_images, make_source
from geo.roads import ROADS_ATTRIBUTION, load_road_segments
from flows.tiled import collect_tiled
from warehouse.build import DEFAULT_HEADING_PENALTY_M, DEFAULT_MAX_DISTANCE_M, AuditCounts, build_audit_database
from warehouse.manifest import write_manifest
from warehouse.publish import publish_run
from warehouse.raster import DEFAULT_CELL_SIZE_M

stage = task(cache_policy=NO_CACHE)  # stages are resumable on disk; Prefect need not hash DataFrames


@stage(name="validate bbox")
def validate_bbox(bbox: str | list[float], max_area_km2: float | None) -> BBox:
    return parse_bbox(bbox, max_area_km2=max_area_km2)


@stage(name="collect images")
def collect(bbox: BBox, source: str, images: str | None, store: Path, max_images: int | None) -> ImageCollection:
    return collect_images(make_source(source, images), bbox, store, max_images=max_images)


def collect_any(bbox: BBox, source: str, images: str | None, store: Path, work: Path, max_images: int | None,
                options: dict | None) -> ImageCollection:
    """Tiled sources (mapillary) get one task per tile; the others one collect task."""
    imagery = make_source(source, images, options=options)
    if hasattr(imagery, "tiles"):
        return collect_tiled(imagery, bbox, store, work, max_images)
    return collect(bbox, source, images, store, max_images)


@stage(name="load road segments")
def road_segments(bbox: BBox, roads: str, road_classes: str | list[str] | None, max_segment_length_m: float | None):
    return load_road_segments(bbox, roads, road_classes=road_classes, max_segment_length_m=max_segment_length_m)


@stage(name="classify images")
def classify(collection: ImageCollection, store: Path, model: str, weights: str | None, device: str | None,
             batch_size: int, cache_dir: Path, heads: str | None = None, feature_cache: str | None = None,
             device_decode: bool = False):
    return classify_image_store(collection.images, store, model=model, weights=weights, device=device,
                                batch_size=batch_size, cache_dir=cache_dir, heads=heads,
                                feature_cache=feature_cache, device_decode=device_decode)


@stage(name="adapt to the city")
def adapt_to_city(collection: ImageCollection, store: Path, method: str, attributes: list[str], out_dir: Path,
                  model: str, weights: str | None, device: str | None, options: dict | None,
                  trained_heads: str | None) -> dict:
    return adapt_image_store(collection.images, store, method, attributes, out_dir, model=model, weights=weights,
                             device=device, options=options, trained_heads=trained_heads, progress=False)


@stage(name="build audit database")
def build_database(database: Path, **tables) -> AuditCounts:
    return build_audit_database(database, **tables)


@stage(name="publish outputs")
def export(database: Path, out: Path, **options) -> dict[str, str]:
    return publish_run(database, out, {name: a.classes for name, a in ATTRIBUTES.items()}, **options)


@flow(name="city-audit", log_prints=True)
def city_audit(
    bbox: str | list[float],
    source: str = "sample",
    images: str | None = None,
    roads: str = "sample",
    model: str = "vit-b16",
    weights: str | None = None,
    out: str = "outputs/city-audit",
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
    max_images: int | None = None,
    max_area_km2: float | None = DEFAULT_MAX_AREA_KM2,
    batch_size: int = 32,
    device: str | None = None,
    heads: str | None = None,
    feature_cache: str | None = None,
    device_decode: bool = False,
    adapt: str | None = None,
    adapt_attributes: list[str] | None = None,
    adapt_options: dict | None = None,
    road_classes: str | list[str] | None = None,
    max_segment_length_m: float | None = None,
    heading_penalty_m: float = DEFAULT_HEADING_PENALTY_M,
    slice_by_year: bool = False,
    partition_by_tile: bool = False,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    mapillary: dict | None = None,
) -> dict:
    """Audit the streets in ``bbox``.

    bbox: "minlon,minlat,maxlon,maxlat" or [minlon, minlat, maxlon, maxlat] (WGS84).
    source: "sample" (bundled Stuttgart area), "folder" (with ``images`` = a folder holding
    images.parquet/images.csv) or "mapillary" (Mapillary API v4, docs/mapillary.md). roads: "sample",
    a local OSM extract (.osm.pbf; road_classes: highway values to keep, max_segment_length_m: split
    longer segments) or a vector file of road lines.
    heading_penalty_m: how much further a road across the camera's heading counts when matching.
    slice_by_year: also aggregate per capture year. partition_by_tile: also write z14-tile
    partitioned GeoParquet. cell_size_m: coverage GeoTIFF cell size. model: "vit-b16"
    (OpenAI weights, downloaded once) or "tiny" (random, untrained; offline tests). weights: a
    local checkpoint file. out: the output folder. heads: a folder of trained head checkpoints
    (``city-audit train``); attributes without one are zero-shot, and each prediction records its
    method. feature_cache: a folder keeping backbone outputs per image. device_decode: decode
    JPEGs on the GPU. adapt: "microclip" or "fair" (FAIR-style, reconstructed) adapts
    ``adapt_attributes`` (default all 8) to this run's own images before classifying (unsupervised
    self-training; ``adapt_options`` override ``classify.adapt.AdaptConfig``) and predicts those
    attributes with the adapted heads, recording the method. mapillary: options of source
    "mapillary" (fields of ``geo.mapillary.MapillaryOptions``; never the token, which comes from
    MAPILLARY_ACCESS_TOKEN or the Secret block named by ``token_secret``). Returns the run summary.
    """
    logger = get_run_logger()
    parameters = dict(bbox=bbox, source=source, images=images, roads=roads, model=model, weights=weights, out=out,
                      max_distance_m=max_distance_m, max_images=max_images, max_area_km2=max_area_km2,
                      batch_size=batch_size, device=device, heads=heads, feature_cache=feature_cache,
                      device_decode=device_decode, adapt=adapt, adapt_attributes=adapt_attributes,
                      adapt_options=adapt_options, road_classes=road_classes,
                      max_segment_length_m=max_segment_length_m, heading_penalty_m=heading_penalty_m,
                      slice_by_year=slice_by_year, partition_by_tile=partition_by_tile, cell_size_m=cell_size_m,
                      mapillary=mapillary)
    run_id = str(flow_run.id or uuid.uuid4())
    out_dir = Path(out).expanduser().resolve()
    store, work = out_dir / "images", out_dir / "work"
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return result

    area = timed("validate_bbox", validate_bbox, bbox, max_area_km2)
    parameters["bbox"] = area.as_list()
    out_dir.mkdir(parents=True, exist_ok=True)
    collection = timed("collect_images", collect_any, area, source, images, store, work, max_images, mapillary)
    segments = timed("load_road_segments", road_segments, area, roads, road_classes, max_segment_length_m)
    adaptation = None
    if adapt:
        adapted_dir = work / f"adapted-{adapt}"
        adaptation = timed("adapt_to_city", adapt_to_city, collection, store, adapt, list(adapt_attributes or ATTRIBUTES),
                           adapted_dir, model, weights, device, adapt_options, heads)
        heads = str(adapted_dir)  # adapted heads, plus the --heads checkpoints of the other attributes
    classified = timed("classify_images", classify, collection, store, model, weights, device, batch_size, work,
                       heads, feature_cache, device_decode)
    if not classified.model["trained"]:
        logger.warning(UNTRAINED_WARNING.format(model=model))
    failures = pd.concat([collection.failures, classified.failures], ignore_index=True)
    partial_db = out_dir / ".audit.duckdb.partial"
    counts = timed("build_audit_database", build_database, partial_db, images=collection.images, segments=segments,
                   predictions=classified.predictions, failures=failures,
                   run_id=run_id, metric_crs=area.utm_crs(), max_distance_m=max_distance_m,
                   heading_penalty_m=heading_penalty_m, slice_by_year=slice_by_year)
    shutil.move(partial_db, out_dir / "audit.duckdb")
    outputs = timed("publish_outputs", export, out_dir / "audit.duckdb", out_dir, metric_crs=area.utm_crs(), run_id=run_id,
                    model_trained=classified.model["trained"], max_distance_m=max_distance_m,
                    cell_size_m=cell_size_m, partition_by_tile=partition_by_tile)
    outputs.update(database=str(out_dir / "audit.duckdb"), image_store=str(store))
    summary = {
        "run_id": run_id,
        "out": str(out_dir),
        "model_trained": classified.model["trained"],
        "images": counts.images,
        "matched_images": counts.matched_images,
        "segments": counts.segments,
        "segments_with_predictions": counts.segments_with_images,
        "predictions": counts.predictions,
        "failures": len(failures),
        "predictions_reused": classified.reused,
        "adapted": adaptation,
    }
    attribution = [make_source(source, images).attribution, ROADS_ATTRIBUTION.get(roads, f"roads from {roads}"),
                   "attribute schema: Global StreetScapes (Hou et al. 2024, ISPRS J. 215:216-238)"]
    outputs["manifest"] = str(write_manifest(
        out_dir / "run.json", run_id=run_id, parameters=parameters,
        model={**classified.model, **({"adaptation": adaptation} if adaptation else {})},
        counts={k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)},
        timings_s=timings, failures=failures.to_dict("records"), outputs=outputs, attribution=attribution))
    summary["outputs"] = outputs
    logger.info("city-audit finished: %(images)d images, %(matched_images)d matched to roads, "
                "%(segments_with_predictions)d of %(segments)d segments with predictions -> %(out)s", summary)
    return summary
