"""The end of a run: its database built and moved into place, its summary, ``run.json`` and the swap of its outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import geopandas as gpd
import pandas as pd
import pyarrow as pa

from contracts.results import RunFolder
from warehouse.build import AuditCounts, build_audit_database
from warehouse.db import connect
from warehouse.defaults import DEFAULT_MAX_DISTANCE_M
from warehouse.manifest import write_manifest
from warehouse.outputs import swap_in, verify_database
from warehouse.report import empty_run_causes


def build_run_database(folder: RunFolder, *, images: pd.DataFrame | str | os.PathLike, segments: gpd.GeoDataFrame,
                       predictions: pa.Table | Sequence[str | os.PathLike], failures: pd.DataFrame, metric_crs: str,
                       max_distance_m: float, heading_penalty_m: float, slice_by_year: bool) -> AuditCounts:
    """Build the run's ``audit.duckdb`` in its staging folder (moved into place once complete); returns the row counts.

    ``images``: a frame or a Parquet file of the images contract;
    ``predictions``: the classification stage's Parquet chunk files (or a table of the predictions contract).
    """
    partial = folder.staging / ".audit.duckdb.partial"
    counts = build_audit_database(partial, images=images, segments=segments, predictions=predictions,
                                  failures=failures, run_id=folder.run_id, metric_crs=metric_crs,
                                  max_distance_m=max_distance_m, heading_penalty_m=heading_penalty_m,
                                  slice_by_year=slice_by_year)
    os.replace(partial, folder.database)
    return counts


def finish_run(folder: RunFolder, *, parameters: Mapping[str, Any], model: Mapping[str, Any],
               adaptation: Mapping[str, Any] | None, counts: AuditCounts, failures: pd.DataFrame,
               predictions_reused: int, outputs: Mapping[str, str], timings_s: Mapping[str, float],
               credits: list[str], ingest: Mapping[str, Any] | None = None, chunks: int = 0,
               chunks_reused: int = 0, sources: Mapping[str, str] | None = None,
               max_distance_m: float = DEFAULT_MAX_DISTANCE_M) -> dict[str, Any]:
    """Write ``run.json``, check the outputs and swap them in as a whole; returns the run summary (counts,
    outputs, what was adapted). ``outputs`` are the published files, in the staging folder.

    ``predictions_reused``: images whose predictions came from complete chunk files of an earlier
    run; ``chunks`` / ``chunks_reused``: classification chunks in all / reused (both go into
    ``run.json``'s counts). ``sources`` / ``max_distance_m``: the run's sources and match distance, which
    say why an empty run is empty (``empty_run`` in the summary and in ``run.json``)."""
    verify_database(folder.database, counts.images, counts.segments)
    with connect(folder.database, read_only=True) as con:
        causes = empty_run_causes(con, images=counts.images, segments=counts.segments,
                                  matched=counts.matched_images, max_distance_m=max_distance_m, sources=sources)
    summary = {
        "run_id": folder.run_id,
        "out": str(folder.out),
        "model_trained": bool(model["trained"]),
        "images": counts.images,
        "matched_images": counts.matched_images,
        "segments": counts.segments,
        "segments_with_predictions": counts.segments_with_images,
        "predictions": counts.predictions,
        "failures": len(failures),
        "predictions_reused": int(predictions_reused),
        "classification_chunks": int(chunks),
        "classification_chunks_reused": int(chunks_reused),
        "adapted": adaptation,
        "empty_run": causes,
    }
    final = {name: str(folder.out / Path(path).relative_to(folder.staging)) for name, path in outputs.items()}
    final.update(database=str(folder.out / folder.database.name), image_store=str(folder.store),
                 manifest=str(folder.out / "run.json"))
    write_manifest(
        folder.staging / "run.json", run_id=folder.run_id, parameters=parameters,
        model={**model, **({"adaptation": adaptation} if adaptation else {})},
        counts={**{k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)},
                "ingest": dict(ingest or {})},
        timings_s=timings_s, failures=failures.to_dict("records"), outputs=final, attribution=credits,
        empty_run=causes)
    swap_in(folder.staging, folder.out)
    return {**summary, "outputs": final}
