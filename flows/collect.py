"""Collect images from any imagery source with one Prefect task per work unit.

A source splits the area into work units (``geo.imagery.ImagerySource.work_units``: one for a
local folder, z14 tiles for Mapillary). Discovery is mapped over the units and cached by the
source's key for the unit (never for a folder; never the token); selection runs once over all
units (thinning follows sequences across tile borders); collection is mapped over the units
that have selected images. A unit that fails for good becomes a row of the failures table; a
token problem stops the run with its message. Each task calls one method of the source.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from contracts.results import ImageCollection, UnitDiscovery, merge_collections
from contracts.tables import failures_frame
from geo.bbox import BBox
from geo.imagery import ImagerySource
from geo.mapillary.errors import InvalidTokenError, MissingTokenError, describe

DISCOVERY_CACHE = timedelta(hours=12)  # coverage changes slowly; a day-old answer is still a fair one


def _discovery_key(context, parameters) -> str | None:
    key = parameters["source"].unit_cache_key(parameters["unit"], parameters["bbox"])
    return None if key is None else f"discover-{parameters['source'].name}-{key}"


def _do_not_cache() -> None:
    """Keep this task run's result out of the cache (its transaction writes nothing on commit)."""
    from prefect.transactions import get_transaction

    transaction = get_transaction()
    if transaction is not None:
        transaction.write_on_commit = False


@task(name="discover unit", cache_key_fn=_discovery_key, cache_expiration=DISCOVERY_CACHE, persist_result=True,
      task_run_name="discover {unit}")
def discover_unit(source: ImagerySource, unit: str, bbox: BBox, manifest: Path) -> UnitDiscovery:
    found = source.discover_unit(unit, bbox, manifest)
    if not found.complete:
        _do_not_cache()
    return found


@task(name="prepare image store", cache_policy=NO_CACHE)
def prepare_store(source: ImagerySource, store: Path) -> Path:
    return source.prepare(store)


@task(name="select images", cache_policy=NO_CACHE)
def select_images(source: ImagerySource, candidates: list[pd.DataFrame], bbox: BBox,
                  max_images: int | None) -> tuple[pd.DataFrame, dict[str, int]]:
    return source.select_counted(candidates, bbox, max_images)


@task(name="collect unit", cache_policy=NO_CACHE, task_run_name="collect {unit}")
def collect_unit(source: ImagerySource, selected: pd.DataFrame, store: Path, manifest: Path,
                 unit: str) -> ImageCollection:
    return source.collect_unit(selected, store, manifest, unit)


def _outcomes(futures, units: list[str], unit_column: str, stage: str, on_done=None) -> tuple[list, list[tuple[str, str, str]]]:
    """Results of mapped per-unit futures in unit order, and a failure row for each unit that failed.

    Token errors are re-raised: every other unit would fail the same way.
    """
    index = {id(f): i for i, f in enumerate(futures)}
    results, failures = [None] * len(futures), []
    for done, future in enumerate(as_completed(futures), start=1):
        i = index[id(future)]
        try:
            results[i] = future.result()
        except (InvalidTokenError, MissingTokenError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad unit must not sink the city
            failures.append((f"{unit_column} {units[i]}", stage, describe(exc)))
        if on_done:
            on_done(done)
    return [r for r in results if r is not None], failures


def collect_by_unit(source: ImagerySource, bbox: BBox, store: Path, work: Path,
                    max_images: int | None = None) -> ImageCollection:
    """Images of ``source`` in ``bbox`` in ``store``: mapped discovery, one selection, mapped collection."""
    logger = get_run_logger()
    manifest = Path(work) / f"{source.name}-manifest.sqlite"  # resume state, for sources that keep one
    manifest.parent.mkdir(parents=True, exist_ok=True)
    prepare_store(source, store)  # fails in milliseconds when a token is missing
    units = source.work_units(bbox)
    logger.info("%s: %d work unit(s) cover the bbox", source.name, len(units))
    found, discover_failures = _outcomes(
        discover_unit.map(unmapped(source), units, unmapped(bbox), unmapped(manifest)), units, source.unit_column,
        f"{source.name} discover")
    selected, not_selected = select_images(source, [d.records for d in found], bbox, max_images)
    groups = ([(unit, rows.reset_index(drop=True)) for unit, rows in selected.groupby(source.unit_column, sort=True)]
              if len(selected) and source.unit_column in selected else [])  # no image found is a result
    logger.info("%s: %d images discovered, %d selected in %d unit(s)", source.name,
                sum(len(d.records) for d in found), len(selected), len(groups))
    progress = create_progress_artifact(progress=0.0, key=f"{source.name}-collect",
                                        description="work units collected, in percent") if groups else None

    def report(done: int) -> None:
        update_progress_artifact(progress, progress=100.0 * done / len(groups))
        logger.info("%s: %d of %d work units collected", source.name, done, len(groups))

    parts, collect_failures = _outcomes(
        collect_unit.map(unmapped(source), [g[1] for g in groups], unmapped(store), unmapped(manifest),
                         [g[0] for g in groups]),
        [g[0] for g in groups], source.unit_column, f"{source.name} download", on_done=report)
    by_unit = {f"{source.unit_column} {unit}": rows for unit, rows in groups}
    per_image = [(str(image_id), stage, reason) for item, stage, reason in collect_failures
                 for image_id in by_unit[item]["image_id"]]  # every image of a unit that failed
    collected = merge_collections(parts, failures_frame(per_image))
    result = source.finish(found, discover_failures, selected, not_selected, collected, units=len(units))
    logger.info("%s: %s", source.name, result.counts)
    return result
