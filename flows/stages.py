"""The stages of the ``city-audit`` flow as Prefect tasks: each calls one function of a package.

``@stage`` makes a task that is never cached (stages resume from their own files on disk) and
records its wall time in the run's timings (``timings()``), so the flow needs no wrapper
around each call.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

import geopandas as gpd
import pandas as pd
from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

import geo.roads
from classify.schema import ATTRIBUTES
from contracts.notices import untrained_warning
from contracts.results import ImageCollection, RunFolder
from contracts.tables import failures_frame
from flows.collect import collect_by_unit
from flows.config import (AdaptationConfig, ExecutionConfig, ImageryConfig, MatchingConfig, ModelConfig, OutputsConfig,
                          RoadsConfig)
from flows.execution import classification_placement, on_cluster, worker_name
from geo.bbox import BBox
from geo.imagery import make_source
from warehouse.build import AuditCounts
from warehouse.publish import publish_run
from warehouse.runs import build_run_database

# torch and open_clip (classify.backbone, .checkpoints, .stage: ~6 s of imports) load in the stages that use
# them, so that the flow module imports in ~2 s and collection can start while they load (flows.cli.preload).
if TYPE_CHECKING:
    from classify.backbone import Backbone
    from classify.stage import ChunkFiles, ChunkPlan, ClassificationResult

_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("city_audit_timings", default=None)


@contextmanager
def timings() -> Iterator[dict[str, float]]:
    """Collect the wall time of every stage run inside the block, by stage function name."""
    recorded: dict[str, float] = {}
    token = _TIMINGS.set(recorded)
    try:
        yield recorded
    finally:
        _TIMINGS.reset(token)


def record_timing(stage_name: str, seconds: float) -> None:
    """Add one stage's wall time to the ``timings()`` being collected, if any."""
    recorded = _TIMINGS.get()
    if recorded is not None:
        recorded[stage_name] = seconds


def stage(name: str):
    """A never-cached Prefect task named ``name`` whose wall time goes into ``timings()``."""
    def decorate(function):
        @functools.wraps(function)
        def timed(*args, **kwargs):  # refers to no ContextVar itself: Prefect may cloudpickle the flow by value
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                record_timing(function.__name__, time.perf_counter() - start)

        return task(name=name, cache_policy=NO_CACHE)(timed)

    return decorate


@stage("collect images")
def collect_images(area: BBox, imagery: ImageryConfig, folder: RunFolder) -> ImageCollection:
    """Images of the configured source in ``area``, one task per work unit of the source."""
    source = make_source(imagery.source, imagery.images, options=imagery.mapillary,
                         allow_outside=imagery.allow_outside_paths, copy_images=imagery.copy_images)
    collection = collect_by_unit(source, area, folder.store, folder.work, imagery.max_images)
    # the images table goes to the work folder: later stages read the columns they need from it
    return replace(collection, attribution=source.attribution).on_disk(folder.work / "images.parquet")


@stage("load road segments")
def load_road_segments(area: BBox, roads: RoadsConfig) -> gpd.GeoDataFrame:
    return geo.roads.load_road_segments(area, roads.roads, road_classes=roads.road_classes,
                                        max_segment_length_m=roads.max_segment_length_m)


@stage("load backbone")
def load_backbone(model: ModelConfig) -> Backbone:
    """The run's backbone, loaded once and shared by adaptation and classification."""
    import classify.backbone  # imported on use: torch and open_clip

    backbone = classify.backbone.load_backbone(model.model, weights=model.weights, device=model.device)
    if not backbone.trained:
        get_run_logger().warning(untrained_warning(model.model))
    return backbone


@stage("adapt to the city")
def adapt_to_city(collection: ImageCollection, folder: RunFolder, adaptation: AdaptationConfig, backbone: Backbone,
                  trained_heads: str | None) -> dict:
    from classify.adapt import adapt_image_store  # imported on use: open_clip training parts, timm

    return adapt_image_store(collection.image_frame(), folder.store, adaptation.adapt,
                             list(adaptation.adapt_attributes or ATTRIBUTES), folder.work / f"adapted-{adaptation.adapt}",
                             backbone=backbone, options=adaptation.loop_options(), trained_heads=trained_heads,
                             progress=False)


#: A chunk whose worker died (or failed for a passing reason) is run again: its files are written atomically,
#: so a rerun neither loses nor duplicates a prediction.
CHUNK_RETRIES = 2


@task(name="classify chunk", cache_policy=NO_CACHE, retries=CHUNK_RETRIES, task_run_name="classify chunk {plan.index}")
def classify_chunk_task(plan: ChunkPlan, model: ModelConfig, heads: str | None, loaded: tuple | None = None) -> ChunkFiles:
    """One chunk of images classified into its Parquet files (reused when complete).

    ``loaded``: the run's (backbone, heads) when the chunk runs in the flow's process; on a Dask
    worker the backbone is loaded once per worker process (``classify.stage.process_models``).
    """
    from classify.stage import classify_chunk, process_models  # imported on use: torch

    backbone, built = loaded or process_models(model.model, model.weights, model.device, heads)
    worker = worker_name()
    if worker is not None:
        get_run_logger().info("classify chunk %d on Dask worker %s (%s)", plan.index, worker, backbone.device)
    return classify_chunk(plan, backbone, built, batch_size=model.batch_size, feature_cache=model.feature_cache,
                          device_decode=model.gpu_decode, progress=False)


def classify_images(collection: ImageCollection, folder: RunFolder, backbone: Backbone, model: ModelConfig,
                    heads: str | None, execution: ExecutionConfig = ExecutionConfig()) -> ClassificationResult:
    """Every image classified in chunks of ``execution.chunk_images``: one after another in this process, or
    one task per chunk on the Dask cluster; returns the chunk files, in chunk order.

    Not a task itself but the flow's own step (its time still goes into ``timings()``): a task
    submitted from inside another task carries that task's parameters (here the backbone and
    the images table) to every worker, in every chunk's context.
    """
    from classify.checkpoints import serving_heads  # imported on use: torch
    from classify.stage import ClassificationResult, model_ids_of, model_info, plan_chunks, remove_stale_chunks

    start = time.perf_counter()
    try:
        logger = get_run_logger()
        built = serving_heads(backbone, heads)
        plans = plan_chunks(collection.image_frame(["image_id", "path", "sha256"]), folder.store, model_ids_of(backbone, built), folder.work,
                            execution.chunk_images)
        todo = sum(not p.is_complete() for p in plans)
        logger.info("classification: %d chunk(s) of up to %d images, %d to classify, %d complete from an earlier run",
                    len(plans), execution.chunk_images, todo, len(plans) - todo)
        if on_cluster():
            import dask

            placement = classification_placement()
            if placement:
                logger.info("classification: chunks go to the cluster's GPU workers only (Dask resource %s)",
                            placement["resources"])
            with dask.annotate(**placement):
                futures = classify_chunk_task.map(plans, unmapped(model), unmapped(heads))
            chunks = [f.result() for f in futures]
        else:
            chunks = []
            for plan in plans:
                chunks.append(classify_chunk_task(plan, model, heads, loaded=(backbone, built)))
                if not chunks[-1].reused:
                    logger.info("classification: chunk %d of %d done", plan.index + 1, len(plans))
        remove_stale_chunks(plans)
        return ClassificationResult(chunks, model_info(backbone, built))
    finally:
        record_timing("classify_images", time.perf_counter() - start)


@stage("build audit database")
def build_audit_database(folder: RunFolder, area: BBox, collection: ImageCollection, segments: gpd.GeoDataFrame,
                         classified: ClassificationResult, failures: pd.DataFrame, matching: MatchingConfig,
                         outputs: OutputsConfig) -> AuditCounts:
    return build_run_database(folder, images=collection.image_source(), segments=segments,
                              predictions=[str(p) for p in classified.prediction_files],
                              failures=failures, metric_crs=area.utm_crs(), max_distance_m=matching.max_distance_m,
                              heading_penalty_m=matching.heading_penalty_m, slice_by_year=outputs.by_year)


@stage("publish outputs")
def publish_outputs(folder: RunFolder, area: BBox, model_trained: bool, credits: list[str], matching: MatchingConfig,
                    outputs: OutputsConfig, sources: dict[str, str] | None = None) -> dict[str, str]:
    """Every planner output from the built database into the staging folder (``sources``: the run's image and
    road sources, which an empty run's report names)."""
    return publish_run(folder.database, folder.staging, {name: a.classes for name, a in ATTRIBUTES.items()},
                       metric_crs=area.utm_crs(), run_id=folder.run_id, model_trained=model_trained,
                       max_distance_m=matching.max_distance_m, cell_size_m=outputs.cell_size_m,
                       partition_by_tile=outputs.tiles, attribution=credits, image_store=folder.store, sources=sources)


def run_failures(collection: ImageCollection, classified: ClassificationResult) -> pd.DataFrame:
    """Every failure of the run: collection's, then classification's."""
    parts = [f for f in (collection.failures, classified.failures()) if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else failures_frame()
