"""Collect images from a tiled source (``mapillary``) with one Prefect task per z14 tile.

Discovery is mapped over the tiles and cached by tile, the tile's part of the bbox, the
filters and the endpoints (never the token); selection runs once over all tiles (thinning
follows sequences across tile borders); downloads are mapped over the tiles that have
selected images. A tile that fails for good becomes a row of the failures table; a token
problem stops the run with its message. Each task calls one function of ``geo.mapillary``.

Only a successful, complete discovery is cached: a tile that failed (raised, so Prefect keeps
no result) or came back incomplete (failure rows, a search box still full) is not written to
the cache and is asked again by the next run, even into another ``--out``. The collection's
``counts`` (discovered, selected, not_selected, downloaded, failed per reason, tiles_failed;
see ``geo.mapillary.counts``) add up and are meant for ``run.json``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from geo.bbox import BBox
from geo.imagery import ImageCollection
from geo.mapillary import InvalidTokenError, MissingTokenError
from geo.mapillary.counts import FAILURE_COLUMNS, TileDiscovery, finish
from geo.mapillary.errors import describe
from geo.mapillary.source import MANIFEST_NAME, MapillarySource, merge_collections

DISCOVERY_CACHE = timedelta(hours=12)  # coverage changes slowly; a day-old answer is still a fair one


def _discovery_key(context, parameters) -> str:
    return f"mapillary-discover-{parameters['source'].query_key(parameters['tile'], parameters['bbox'])}"


def _do_not_cache() -> None:
    """Keep this task run's result out of the cache (its transaction writes nothing on commit)."""
    from prefect.transactions import get_transaction

    transaction = get_transaction()
    if transaction is not None:
        transaction.write_on_commit = False


@task(name="discover tile", cache_key_fn=_discovery_key, cache_expiration=DISCOVERY_CACHE, persist_result=True,
      task_run_name="discover {tile}")
def discover_tile(source: MapillarySource, tile: str, bbox: BBox, manifest: Path) -> TileDiscovery:
    found = source.discover_tile_result(tile, bbox, manifest)
    if not found.complete:
        _do_not_cache()
    return found


@task(name="prepare image store", cache_policy=NO_CACHE)
def prepare_store(source: MapillarySource, store: Path) -> Path:
    return source.prepare_store(store)


@task(name="select images", cache_policy=NO_CACHE)
def select_images(source: MapillarySource, candidates: list[pd.DataFrame], bbox: BBox
                  ) -> tuple[pd.DataFrame, dict[str, int]]:
    return source.select_counted(candidates, bbox)


@task(name="download tile", cache_policy=NO_CACHE, task_run_name="download {tile}")
def download_tile(source: MapillarySource, selected: pd.DataFrame, store: Path, manifest: Path,
                  tile: str) -> ImageCollection:
    return source.download_tile(selected, store, manifest, label=tile)


def _outcomes(futures, tiles: list[str], stage: str, on_done=None) -> tuple[list, list[tuple[str, str, str]]]:
    """Results of mapped per-tile futures in tile order, and a failure row for each tile that failed.

    Token errors are re-raised: every other tile would fail the same way.
    """
    index = {id(f): i for i, f in enumerate(futures)}
    results, failures = [None] * len(futures), []
    for done, future in enumerate(as_completed(futures), start=1):
        i = index[id(future)]
        try:
            results[i] = future.result()
        except (InvalidTokenError, MissingTokenError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad tile must not sink the city
            failures.append((f"tile {tiles[i]}", stage, describe(exc)))
        if on_done:
            on_done(done)
    return [r for r in results if r is not None], failures


def collect_tiled(source: MapillarySource, bbox: BBox, store: Path, work: Path,
                  max_images: int | None = None) -> ImageCollection:
    """Images of ``source`` in ``bbox`` in ``store``: mapped discovery, one selection, mapped downloads."""
    logger = get_run_logger()
    if max_images is not None:
        source = source.with_options(max_images=max_images)
    source.check_token()  # fail in milliseconds when no token is configured
    manifest = Path(work) / MANIFEST_NAME
    manifest.parent.mkdir(parents=True, exist_ok=True)
    prepare_store(source, store)
    tiles = source.tiles(bbox)
    logger.info("mapillary: %d z14 tiles cover the bbox (discovery: %s)", len(tiles), source.options.discovery)
    found, discover_failures = _outcomes(
        discover_tile.map(unmapped(source), tiles, unmapped(bbox), unmapped(manifest)), tiles, "mapillary discover")
    selected, not_selected = select_images(source, [d.records for d in found], bbox)
    groups = ([(tile, rows.reset_index(drop=True)) for tile, rows in selected.groupby("tile", sort=True)]
              if len(selected) and "tile" in selected else [])  # no image found is a result, not a KeyError
    logger.info("mapillary: %d images discovered, %d selected in %d tiles",
                sum(len(d.records) for d in found), len(selected), len(groups))
    progress = create_progress_artifact(progress=0.0, key="mapillary-download",
                                        description="tiles downloaded, in percent") if groups else None

    def report(done: int) -> None:
        update_progress_artifact(progress, progress=100.0 * done / len(groups))
        logger.info("mapillary: %d of %d tiles downloaded", done, len(groups))

    parts, download_failures = _outcomes(
        download_tile.map(unmapped(source), [g[1] for g in groups], unmapped(store), unmapped(manifest),
                          [g[0] for g in groups]),
        [g[0] for g in groups], "mapillary download", on_done=report)
    by_tile = dict(groups)
    per_image = [(str(image_id), stage, reason) for item, stage, reason in download_failures
                 for image_id in by_tile[item.removeprefix("tile ")]["image_id"]]  # every image of a failed tile
    downloaded = merge_collections([*parts, ImageCollection(pd.DataFrame(), pd.DataFrame(per_image,
                                                                                         columns=FAILURE_COLUMNS))])
    result = finish(found, discover_failures, selected, not_selected, downloaded, tiles=len(tiles))
    logger.info("mapillary: %s", {k: v for k, v in result.counts.items()})
    return result
