"""Collect images from a tiled source (``mapillary``) with one Prefect task per z14 tile.

Discovery is mapped over the tiles and cached by tile, the tile's part of the bbox, the
filters and the endpoints (never the token); selection runs once over all tiles (thinning
follows sequences across tile borders); downloads are mapped over the tiles that have
selected images. A tile that fails for good becomes a row of the failures table; a token
problem stops the run with its message. Each task calls one function of ``geo.mapillary``.
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
from geo.mapillary.errors import redact
from geo.mapillary.source import FAILURE_COLUMNS, MANIFEST_NAME, MapillarySource, merge_collections

DISCOVERY_CACHE = timedelta(hours=12)  # coverage changes slowly; a day-old answer is still a fair one


def _discovery_key(context, parameters) -> str:
    return f"mapillary-discover-{parameters['source'].query_key(parameters['tile'], parameters['bbox'])}"


@task(name="discover tile", cache_key_fn=_discovery_key, cache_expiration=DISCOVERY_CACHE, persist_result=True,
      task_run_name="discover {tile}")
def discover_tile(source: MapillarySource, tile: str, bbox: BBox, manifest: Path) -> pd.DataFrame:
    return source.discover_tile(tile, bbox, manifest)


@task(name="prepare image store", cache_policy=NO_CACHE)
def prepare_store(source: MapillarySource, store: Path) -> Path:
    return source.prepare_store(store)


@task(name="select images", cache_policy=NO_CACHE)
def select_images(source: MapillarySource, candidates: list[pd.DataFrame], bbox: BBox) -> pd.DataFrame:
    return source.select(candidates, bbox)


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
            failures.append((f"tile {tiles[i]}", stage, redact(f"{type(exc).__name__}: {exc}")))
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
    selected = select_images(source, found, bbox)
    groups = [(tile, rows.reset_index(drop=True)) for tile, rows in selected.groupby("tile", sort=True)]
    logger.info("mapillary: %d images discovered, %d selected in %d tiles",
                sum(len(f) for f in found), len(selected), len(groups))
    progress = create_progress_artifact(progress=0.0, key="mapillary-download",
                                        description="tiles downloaded, in percent") if groups else None

    def report(done: int) -> None:
        update_progress_artifact(progress, progress=100.0 * done / len(groups))
        logger.info("mapillary: %d of %d tiles downloaded", done, len(groups))

    parts, download_failures = _outcomes(
        download_tile.map(unmapped(source), [g[1] for g in groups], unmapped(store), unmapped(manifest),
                          [g[0] for g in groups]),
        [g[0] for g in groups], "mapillary download", on_done=report)
    failures = pd.DataFrame(discover_failures + download_failures, columns=FAILURE_COLUMNS)
    return merge_collections([*parts, ImageCollection(pd.DataFrame(), failures)])
