"""The ``city-audit`` Prefect flow: bbox -> images -> roads -> attributes -> database -> maps.

The body is the pipeline's table of contents; each stage is a task in ``flows.stages`` that
calls one function of ``geo``, ``classify`` or ``warehouse``. The parameters are the groups of
``flows.config.RunConfig`` (Prefect shows them as a form and validates ``--param``); ``bbox``
takes "minlon,minlat,maxlon,maxlat" or [minlon, minlat, maxlon, maxlat] (WGS84). Run it with
``city-audit run`` or serve it as a deployment (``city-audit serve``).
"""

# No ``from __future__ import annotations`` here: Prefect may cloudpickle a served flow by value, and it
# validates parameters from the annotations, which must then be the config classes, not their names.
import uuid

from prefect import flow
from prefect.runtime import flow_run

from contracts.results import RunFolder
from flows.config import (AdaptationConfig, AreaConfig, ExecutionConfig, ImageryConfig, MatchingConfig, ModelConfig,
                          OutputsConfig, RoadsConfig, build_config, run_config)
from flows.execution import SwitchableTaskRunner, task_runner_for
from flows.stages import (adapt_to_city, build_audit_database, classify_images, collect_images, load_backbone,
                          load_road_segments, publish_outputs, run_failures, timings)
from geo.sources import road_source_for
from warehouse.outputs import claim, staged
from warehouse.attribution import run_attribution
from warehouse.runs import finish_run


@flow(name="city-audit", log_prints=True, task_runner=SwitchableTaskRunner())
def city_audit(bbox: str | list[float] | None = None, area: AreaConfig = AreaConfig(),
               imagery: ImageryConfig = ImageryConfig(), roads: RoadsConfig = RoadsConfig(),
               model: ModelConfig = ModelConfig(), adaptation: AdaptationConfig = AdaptationConfig(),
               matching: MatchingConfig = MatchingConfig(), outputs: OutputsConfig = OutputsConfig(), execution: ExecutionConfig = ExecutionConfig()) -> dict:
    """Audit the streets in ``bbox``; the parameters are documented field by field in ``flows.config``."""
    config = build_config(dict(bbox=bbox, area=area, imagery=imagery, roads=roads, model=model, adaptation=adaptation,
                               matching=matching, outputs=outputs, execution=execution), flag_names=False)
    place = config.place()  # a BBox, or a geo.area.Area (a BBox with the --area polygon)
    with claim(config.out_dir, config.outputs.force) as out, timings() as timings_s:
        folder = RunFolder(out, str(flow_run.id or uuid.uuid4()))
        with task_runner_for(config.execution):  # collection units and classification chunks: here or on Dask
            collection = collect_images(place, config.imagery, folder)
            segments = load_road_segments(place, config.roads)
            backbone = load_backbone(config.model)
            adapted = (adapt_to_city(collection, folder, config.adaptation, backbone, config.model.heads)
                       if config.adaptation.adapt else None)
            classified = classify_images(collection, folder, backbone, config.model,
                                         adapted["heads"] if adapted else config.model.heads, config.execution)
        failures = run_failures(collection, classified)
        with staged(folder):  # the previous outputs stay as they are until these are complete
            counts = build_audit_database(folder, place, collection, segments, classified, failures, config.matching,
                                          config.outputs)
            credits = run_attribution(collection.attribution,
                                      road_source_for(config.roads.roads).attribution(config.roads.roads))
            sources = {"images": config.imagery.source, "roads": str(config.roads.roads)}
            published = publish_outputs(folder, place, classified.model["trained"], credits, config.matching,
                                        config.outputs, sources)
            return finish_run(folder, parameters=config.parameters(), model=classified.model, adaptation=adapted,
                              counts=counts, failures=failures,
                              predictions_reused=classified.reused_images, chunks=len(classified.chunks),
                              chunks_reused=classified.reused_chunks, outputs=published, timings_s=timings_s,
                              credits=credits, ingest={**collection.counts, **segments.attrs.get("counts", {})},
                              sources=sources, max_distance_m=config.matching.max_distance_m)


def audit(**options) -> dict:
    """Run the flow from flat options named as on the command line: ``audit(bbox="9.16,48.76,9.18,48.78",
    source="sample", model="tiny", out="outputs/x")``; each is checked before the flow starts."""
    return city_audit(**run_config(**options).flow_parameters())
