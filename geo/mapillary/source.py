"""The ``mapillary`` imagery source: discover per z14 tile, select, download per tile, resume from a manifest.

Three steps, each a plain function usable without Prefect (the flow maps the per-tile ones):

1. ``discover_tile(tile, bbox)``: image records of one tile, from the coverage vector tile or
   the Graph search; recorded in the manifest, so a rerun does not ask again.
2. ``select(candidates, bbox)``: filters, thinning along sequences, the maximum count.
3. ``download_tile(selected rows of one tile, store)``: fresh URLs, verified files, failures.

``ingest`` runs the three for a whole bbox. ``discover``/``fetch`` implement the generic
``ImagerySource`` protocol of ``geo.imagery`` (one image at a time, slower).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

from contracts.files import write_text_atomic
from contracts.results import ImageCollection, UnitDiscovery
from contracts.tables import FAILURE_COLUMNS, IMAGES, conform, failures_frame
from geo.bbox import BBox
from geo.mapillary.client import MapillaryClient, UnusableAnswer
from geo.mapillary.counts import TileDiscovery, finish
from geo.mapillary.download import download_images, fetch_thumbnail, remove_partials
from geo.mapillary.errors import InvalidTokenError, MissingTokenError, describe
from geo.mapillary.manifest import Manifest
from geo.mapillary.options import ATTRIBUTION, MapillaryOptions, resolve_token
from geo.mapillary.search import search_area
from geo.mapillary.select import records_frame, select_counted
from geo.mapillary.tiles import TileDecodeError, covering_tiles, decode_tile, parse_tile, tile_box

log = logging.getLogger("geo.mapillary")
MANIFEST_NAME = "mapillary-manifest.sqlite"
DISCOVER_STAGE = "mapillary discover"


def run_sync(coroutine):
    """Run a coroutine to completion from synchronous code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


class MapillarySource:
    """Mapillary API v4 images for a bbox. ``options``: a ``MapillaryOptions`` or a dict of its fields."""

    name = "mapillary"
    attribution = ATTRIBUTION

    def __init__(self, options: MapillaryOptions | Mapping[str, Any] | None = None) -> None:
        self.options = MapillaryOptions.from_mapping(options)

    def with_options(self, **changes: Any) -> MapillarySource:
        """A copy of this source with some options changed (e.g. ``max_images``)."""
        return MapillarySource({**self.options.as_dict(), **changes})

    def client(self) -> MapillaryClient:
        """A new client with the token resolved now (never stored on the source)."""
        return MapillaryClient(resolve_token(self.options.token_secret), self.options)

    def check_token(self) -> None:
        """Raise ``MissingTokenError`` now, before any work, when no token is configured."""
        resolve_token(self.options.token_secret)

    def prepare_store(self, store: str | Path) -> Path:
        """Make ``store``, delete temporary files of an interrupted run, write ``ATTRIBUTION.txt``; returns the store."""
        store = Path(store)
        store.mkdir(parents=True, exist_ok=True)
        removed = remove_partials(store)
        if removed:
            log.info("removed %d unfinished downloads of an interrupted run", removed)
        write_text_atomic(store / "ATTRIBUTION.txt",
                          f"{ATTRIBUTION}\nLicence: https://creativecommons.org/licenses/by-sa/4.0/\n"
                          "Each image is by its Mapillary contributor; image ids are the file names.\n")
        return store

    # 1. discovery ------------------------------------------------------------------------------
    def tiles(self, bbox: BBox) -> list[str]:
        """The z14 tiles (``"14/x/y"``) that cover ``bbox``: the unit of work."""
        return covering_tiles(bbox)

    def query_key(self, tile: str, bbox: BBox) -> str:
        """Cache key of one tile's discovery: the tile, its part of ``bbox``, the filters and the endpoints."""
        return self.options.query_key(tile, tile_box(tile, bbox))

    async def discover_tile_async(self, client: MapillaryClient, tile: str, bbox: BBox) -> TileDiscovery:
        """Records of the images in ``tile`` ∩ ``bbox`` (before selection), each with a ``tile`` key, and failures.

        A tile that cannot be decoded is retried like a 5xx (``client.tile``'s check) and then
        raises a ``MapillaryAPIError`` of kind "tile undecodable"; a search box whose answer is
        unusable fails the same way. Results without an id or a usable position, and search
        results outside ``bbox``, become failure rows; the discovery is then incomplete.
        """
        area = tile_box(tile, bbox)
        failures: dict[str, str] = {}
        units: list[tuple[str, str, str]] = []
        if self.options.discovery == "tiles":
            t = parse_tile(tile)
            decoded: dict[str, Any] = {}

            def check(data: bytes) -> None:
                try:
                    # filter by the bbox, not the tile: positions are quantised and may sit a hair outside
                    decoded["result"] = decode_tile(data, tile, bbox=bbox)
                except TileDecodeError as exc:
                    raise UnusableAnswer(f"tile {tile}: {exc}", kind="tile undecodable") from None

            data = await client.tile(self.options.coverage, t.z, t.x, t.y, check=check)
            records, failures = decoded["result"] if data else ([], {})
        else:
            result = await search_area(client, area, self.options, within=bbox)
            records, failures = list(result.records.values()), result.failures
            for box in result.saturated:
                units.append((f"search box {box}", DISCOVER_STAGE,
                              f"search box still full: {self.options.search_limit} results at the smallest size "
                              f"(min_search_tile_deg={self.options.min_search_tile_deg:g}); images may be missing"))
            if result.saturated:
                log.warning("tile %s: %d search boxes were still full at the smallest size; some images may be "
                            "missing there", tile, len(result.saturated))
        for record in records:
            record["tile"] = tile
        rows = units + [(item, DISCOVER_STAGE, reason) for item, reason in sorted(failures.items())]
        found = TileDiscovery(tile, records_frame(records), rows, complete=not rows)
        found.raw = records  # the records as answered, for the manifest (not kept in the result)
        return found

    def discover_tile_result(self, tile: str, bbox: BBox,
                             manifest: Manifest | str | Path | None = None) -> TileDiscovery:
        """Discovery of one tile; reuses and fills the resume ``manifest`` when given (complete answers only)."""
        manifest = Manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
        key = self.query_key(tile, bbox)
        records = manifest.tile_records(tile, key) if manifest is not None else None
        if records is not None:
            found = TileDiscovery(tile, records_frame(records))
        else:
            async def run() -> TileDiscovery:
                async with self.client() as client:
                    return await self.discover_tile_async(client, tile, bbox)

            found = run_sync(run())
            raw, found.raw = found.raw, []
            if manifest is not None and found.complete:  # an incomplete tile is asked again next run
                manifest.record_tile(tile, key, raw)
        log.info("tile %s: %d images discovered, %d failure rows%s", tile, len(found.records), len(found.failures),
                 "" if found.complete else " (incomplete: asked again next run)")
        return found

    def discover_tile(self, tile: str, bbox: BBox, manifest: Manifest | str | Path | None = None) -> pd.DataFrame:
        """Candidate records of one tile as a DataFrame (see ``discover_tile_result`` for the failures)."""
        return self.discover_tile_result(tile, bbox, manifest).records

    # 2. selection ------------------------------------------------------------------------------
    def select_counted(self, candidates: pd.DataFrame | list[pd.DataFrame], bbox: BBox | None = None,
                       max_images: int | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
        """The images to download and, per reason, how many candidates were left out.

        ``max_images`` overrides the ``max_images`` option."""
        if isinstance(candidates, list):
            frames = [c for c in candidates if len(c)]
            candidates = pd.concat(frames, ignore_index=True) if frames else records_frame([])
        options = self.options if max_images is None else self.with_options(max_images=max_images).options
        return select_counted(candidates, options, bbox)

    def select(self, candidates: pd.DataFrame | list[pd.DataFrame], bbox: BBox | None = None) -> pd.DataFrame:
        """The images to download, from the candidates of every tile (filters, thinning, maximum count)."""
        return self.select_counted(candidates, bbox)[0]

    # 3. download -------------------------------------------------------------------------------
    def download_tile(self, selected: pd.DataFrame, store: str | Path, manifest: Manifest | str | Path,
                      progress: bool = True, label: str = "mapillary") -> ImageCollection:
        """Download the ``selected`` rows (usually one tile's) into ``store``; returns images and failures."""
        manifest = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
        columns = list(selected.columns)
        records = ({k: (None if _missing(v) else v) for k, v in zip(columns, row)}
                   for row in selected.itertuples(index=False, name=None))  # lazily, one at a time

        async def run():
            async with self.client() as client:
                return await download_images(client, records, Path(store), manifest, self.options,
                                             total=len(selected), progress=progress, label=label)

        _, failures = run_sync(run())
        return collection(manifest.images_table(selected["image_id"]), failures)

    # the work-unit protocol of every imagery source (geo.imagery.ImagerySource): a unit is a z14 tile
    unit_column = "tile"

    def work_units(self, bbox: BBox) -> list[str]:
        return self.tiles(bbox)

    def unit_cache_key(self, tile: str, bbox: BBox) -> str:
        return self.query_key(tile, bbox)

    def prepare(self, store: str | Path) -> Path:
        """Check that a token is configured, then prepare the store (``prepare_store``)."""
        self.check_token()
        return self.prepare_store(store)

    def discover_unit(self, tile: str, bbox: BBox, manifest: Manifest | str | Path | None = None) -> UnitDiscovery:
        return self.discover_tile_result(tile, bbox, manifest)

    def collect_unit(self, selected: pd.DataFrame, store: str | Path, manifest: Manifest | str | Path,
                     tile: str) -> ImageCollection:
        return self.download_tile(selected, store, manifest, label=tile)

    def finish(self, discoveries: list[UnitDiscovery], unit_failures: list[tuple[str, str, str]],
               selected: pd.DataFrame, not_selected: dict[str, int], collected: ImageCollection,
               units: int) -> ImageCollection:
        return finish(discoveries, unit_failures, selected, not_selected, collected, tiles=units)

    # everything --------------------------------------------------------------------------------
    def ingest(self, bbox: BBox, store: str | Path, manifest: str | Path | None = None,
               progress: bool = True) -> ImageCollection:
        """Discover, select and download every image for ``bbox`` into ``store`` (resumable), without Prefect.

        ``manifest`` defaults to ``<store>/../work/mapillary-manifest.sqlite``.
        """
        store = Path(store)
        manifest = Manifest(manifest or store.parent / "work" / MANIFEST_NAME)
        self.check_token()
        self.prepare_store(store)
        tiles = self.tiles(bbox)
        discoveries, unit_failures = [], []
        for tile in tiles:
            try:
                discoveries.append(self.discover_tile_result(tile, bbox, manifest))
            except (InvalidTokenError, MissingTokenError):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad tile is a failure row; the rest goes on
                unit_failures.append((f"tile {tile}", DISCOVER_STAGE, describe(exc)))
        selected, not_selected = self.select_counted([d.records for d in discoveries], bbox)
        result = self.download_tile(selected, store, manifest, progress=progress)
        return finish(discoveries, unit_failures, selected, not_selected, result, tiles=len(tiles))

    # the generic ImagerySource protocol ----------------------------------------------------------
    def discover(self, bbox: BBox) -> pd.DataFrame:
        """Selected images in ``bbox`` with an ``origin`` column (``mapillary:<id>``), for ``collect_images``."""
        self.check_token()
        frames = [self.discover_tile(tile, bbox) for tile in self.tiles(bbox)]  # a failing tile raises
        selected = self.select(frames, bbox)
        selected["source"] = self.name
        selected["origin"] = "mapillary:" + selected["image_id"].astype(str)
        return selected

    def fetch(self, image: pd.Series, destination: Path) -> None:
        """Write the thumbnail of one image (a row of ``discover``) to ``destination``, with a fresh URL."""
        async def run() -> bytes:
            async with self.client() as client:
                data, _, _ = await fetch_thumbnail(client, str(image["image_id"]), self.options)
                return data

        Path(destination).write_bytes(run_sync(run()))


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def collection(images: pa.Table | pd.DataFrame, failures: list[tuple[str, str, str]]) -> ImageCollection:
    """An ``ImageCollection`` (images contract, failures table) from fetched images and failure tuples."""
    if isinstance(images, pd.DataFrame):
        images = conform(images, IMAGES, what="mapillary images")
    images = images.to_pandas()
    return ImageCollection(images.sort_values("image_id", ignore_index=True),
                           pd.DataFrame(failures, columns=list(FAILURE_COLUMNS)))
