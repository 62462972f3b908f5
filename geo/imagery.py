"""Imagery sources: find the images inside an area and record them (read in place, or copied into a run's store).

A source answers two questions: which images lie in a bbox (``discover``, a DataFrame in the
``images`` contract plus an ``origin`` column saying where the bytes are) and how to get one
image's bytes onto disk (``fetch``). ``collect_images`` does the rest the same way for every
source: read each file once (its sha256 and one reduced-size decode from the same bytes),
record its size and checksum, and put every failure in a failures table. A local folder is
read in place (never written to); a copy (``--copy-images``, the sample, any fetched source)
is written under a temporary name and renamed once it decodes, and kept on a rerun.

Sources are registered by name in ``geo.sources.IMAGERY_SOURCES``: ``sample`` (the bundled
Stuttgart area), ``folder`` (a local folder with a metadata table) and ``mapillary`` (Mapillary
API v4, see ``geo.mapillary``). Every source splits an area into work units (``work_units``:
one for a local folder, z14 tiles for Mapillary) that are discovered, selected and collected
the same way, so the flow treats all sources alike.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from contracts.results import ImageCollection, UnitDiscovery
from contracts.tables import IMAGES, IMAGES_REQUIRED, ContractError, conform, conform_table, failures_frame
from geo.area import OUTSIDE_AREA
from geo.bbox import BBox
from geo.sources import (IMAGERY_SOURCES, METADATA_NAMES, SAMPLE_AREA, ImagerySourceError,  # noqa: F401 - SAMPLE_AREA: API
                         check_images_folder)

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
#: Threads that read, hash and decode local files in place (PIL's decoder and hashlib release the GIL).
CHECK_THREADS = min(4, os.cpu_count() or 1)


class ImagerySource(Protocol):
    name: str
    attribution: str

    def discover(self, bbox: BBox) -> pd.DataFrame:
        """Images in the bbox: the ``images`` contract columns plus ``origin``."""

    def fetch(self, image: pd.Series, destination: Path) -> None:
        """Write the bytes of one image (a row of ``discover``) to ``destination``."""

    # work units: how the flow splits the area (every source has them; see LocalFolderSource)
    unit_column: str

    def work_units(self, bbox: BBox) -> list[str]:
        """The area split into units of work, each discovered and collected by its own task."""

    def unit_cache_key(self, unit: str, bbox: BBox) -> str | None:
        """Cache key of one unit's discovery; None when discovery must never be cached."""

    def prepare(self, store: Path) -> Path:
        """Check what the source needs (a token, a folder) and make the image store; returns it."""

    def discover_unit(self, unit: str, bbox: BBox, manifest: Path | None = None) -> UnitDiscovery:
        """Candidate images of one unit (with the unit in column ``unit_column``) and its failure rows."""

    def select_counted(self, candidates: list[pd.DataFrame], bbox: BBox | None = None,
                       max_images: int | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
        """The images to collect, from every unit's candidates, and how many were not selected, by reason."""

    def collect_unit(self, selected: pd.DataFrame, store: Path, manifest: Path, unit: str) -> ImageCollection:
        """Put one unit's selected images into the store."""

    def finish(self, discoveries: list[UnitDiscovery], unit_failures: list[tuple[str, str, str]],
               selected: pd.DataFrame, not_selected: dict[str, int], collected: ImageCollection,
               units: int) -> ImageCollection:
        """One collection of every image and failure row, with ``counts`` that add up."""


@dataclass
class LocalFolderSource:
    """Images in a local folder, described by ``images.parquet`` or ``images.csv`` in it.

    The metadata table follows the ``images`` contract; ``image_id``, ``lon``, ``lat`` and
    ``path`` (relative to the folder) are required, the other columns are optional.

    Every row ends as an image or a failure row: a row without coordinates ("no geometry"), with
    coordinates out of range, without a path, or whose path leads outside the folder once
    resolved (``../x.jpg``, an absolute path, a symlink pointing out) is a failure with that
    reason. ``allow_outside=True`` is the user's opt-in to follow paths outside the folder.
    Rows outside the bbox are not part of the area and are left out of ``discover``; rows inside
    the bbox but outside an area's polygon are left out by ``select_counted`` ("outside area").

    ``copy=False`` (a folder): the images are read where they are, never written to, and
    ``path`` in the images table is the absolute file; ``copy=True`` (``--copy-images``, and
    the bundled sample) copies each into the run's image store (``path`` relative to it).
    """

    folder: Path
    name: str = "folder"
    attribution: str = "images from a local folder; check their licence before publishing"
    allow_outside: bool = False
    copy: bool = False

    def __post_init__(self) -> None:
        self.folder = check_images_folder(self.folder)
        self.metadata_file = next(self.folder / n for n in METADATA_NAMES if (self.folder / n).is_file())

    def _read_metadata(self) -> pd.DataFrame:
        try:
            if self.metadata_file.suffix == ".parquet":  # cast in Arrow: one pandas copy of a city's table, not two
                table = conform_table(pq.read_table(self.metadata_file), IMAGES, IMAGES_REQUIRED,
                                      what=str(self.metadata_file))
            else:
                frame = pd.read_csv(self.metadata_file, dtype={"image_id": str, "sequence_id": str})
                table = conform(frame, IMAGES, IMAGES_REQUIRED, what=str(self.metadata_file))
                del frame
        except ContractError as exc:
            raise ImagerySourceError(str(exc)) from None
        images = table.to_pandas()
        del table
        if images["image_id"].isna().any() or images["image_id"].duplicated().any():
            dupes = images.loc[images["image_id"].duplicated(), "image_id"].tolist()[:5]
            raise ImagerySourceError(f"{self.metadata_file}: image_id must be present and unique (duplicates: {dupes})")
        return images

    def _origin(self, path) -> tuple[str | None, str | None]:
        """(the resolved file of a ``path`` value, None) or (None, the failure reason)."""
        if path is None or (isinstance(path, float) and pd.isna(path)) or not str(path).strip():
            return None, "no path: the metadata row has an empty path"
        resolved = (self.folder / str(path)).resolve()
        if not self.allow_outside and not resolved.is_relative_to(self.folder):
            return None, (f"path outside the folder: {str(path)!r} resolves to {resolved}, outside {self.folder}; "
                          f"paths must stay inside the images folder (opt in with allow_outside to follow them)")
        return str(resolved), None

    def discover(self, bbox: BBox) -> pd.DataFrame:
        """Rows inside ``bbox``, and rows with unusable coordinates or paths, with ``origin`` and ``failure``."""
        images = self._read_metadata()
        lon, lat = images["lon"], images["lat"]
        missing = lon.isna() | lat.isna()
        out_of_range = ~missing & ~(lon.between(-180, 180) & lat.between(-90, 90))
        inside = lon.between(bbox.min_lon, bbox.max_lon) & lat.between(bbox.min_lat, bbox.max_lat)
        images = images.loc[(inside | missing | out_of_range).to_numpy()].reset_index(drop=True)
        origins = [self._origin(p) for p in images["path"]]
        images["origin"] = [o for o, _ in origins]
        failure = pd.Series([reason for _, reason in origins], dtype=object)
        failure[images["lon"].isna() | images["lat"].isna()] = "no geometry: the metadata row has no lon/lat"
        bad = images["lon"].notna() & images["lat"].notna() & ~(images["lon"].between(-180, 180)
                                                                & images["lat"].between(-90, 90))
        failure[bad] = [f"coordinates out of range: lon={x}, lat={y} (WGS84 degrees: lon in [-180, 180], "
                        f"lat in [-90, 90])" for x, y in zip(images.loc[bad, "lon"], images.loc[bad, "lat"])]
        images["failure"] = failure
        images["source"] = images["source"].fillna(self.name)
        return images

    # work units: a folder is one unit; it can change at any time, so its discovery is never cached
    unit_column = "unit"

    def work_units(self, bbox: BBox) -> list[str]:
        return ["area"]

    def unit_cache_key(self, unit: str, bbox: BBox) -> None:
        return None

    def prepare(self, store: Path) -> Path:
        """Make the run's image store (empty when the images are read in place); the user's folder is not touched."""
        store = Path(store)
        store.mkdir(parents=True, exist_ok=True)
        return store

    def discover_unit(self, unit: str, bbox: BBox, manifest: Path | None = None) -> UnitDiscovery:
        candidates, refused = split_refused(self.discover(bbox).sort_values("image_id", ignore_index=True))
        return UnitDiscovery(unit, candidates.assign(**{self.unit_column: unit}), refused)

    def select_counted(self, candidates: list[pd.DataFrame], bbox: BBox | None = None,
                       max_images: int | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
        frames = [c for c in candidates if len(c)]
        selected = (pd.concat(frames, ignore_index=True) if frames
                    else pd.DataFrame(columns=[*IMAGES.names, "origin", self.unit_column]))
        selected, outside = drop_outside_area(selected.sort_values("image_id", ignore_index=True), bbox)
        selected, beyond = keep_at_most(selected, max_images)
        return selected, {**outside, **beyond}

    def collect_unit(self, selected: pd.DataFrame, store: Path, manifest: Path | None, unit: str) -> ImageCollection:
        return store_images(self, selected.drop(columns=[self.unit_column]), store, progress=False)

    def finish(self, discoveries: list[UnitDiscovery], unit_failures: list[tuple[str, str, str]],
               selected: pd.DataFrame, not_selected: dict[str, int], collected: ImageCollection,
               units: int) -> ImageCollection:
        refused = [row for d in discoveries for row in d.failures]
        discovered = sum(len(d.records) for d in discoveries) + len(refused)
        return counted(collected, discovered=discovered, refused=refused, selected=len(selected),
                       not_selected=not_selected, unit_failures=unit_failures)

    def fetch(self, image: pd.Series, destination: Path) -> None:
        origin = Path(image["origin"])
        if not origin.is_file():
            raise FileNotFoundError(f"{origin} is listed in {self.metadata_file.name} but does not exist")
        # A copy, never a hard link: a link would let later writes to the store alter the user's originals.
        shutil.copyfile(origin, destination)


def sample_source() -> LocalFolderSource:
    """The bundled real sample: 19 Mapillary images and 190 OSM road segments in Stuttgart."""
    return LocalFolderSource(
        SAMPLE_AREA,
        name="sample",
        copy=True,  # the sample lives inside the installed package: runs get their own copy beside the map
        attribution="images © Mapillary contributors, CC BY-SA 4.0 (via the Global StreetScapes sample)",
    )


def make_source(name: str, images: str | os.PathLike | None = None, options: dict | None = None,
                allow_outside: bool = False, copy_images: bool = False) -> ImagerySource:
    """Build a registered imagery source by name (``geo.sources.IMAGERY_SOURCES``); ``options`` are source-specific;
    ``allow_outside`` lets a folder's metadata point at files outside the folder; ``copy_images`` copies a
    folder's images into the run's store instead of reading them in place."""
    return IMAGERY_SOURCES.get(name).build(images, options, allow_outside, copy_images)


def _store_name(image_id: str, origin: str) -> str:
    stem = image_id if _SAFE_ID.match(image_id) else hashlib.sha256(image_id.encode()).hexdigest()[:32]
    suffix = Path(origin).suffix.lower() or ".jpg"
    return f"{stem}{suffix}"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height (pixels) of the encoded image ``data``; raises if it is not a complete, decodable image.

    One decode, reduced in size where the format allows it: a JPEG is decoded at 1/8 scale
    (``Image.draft``: the DCT is scaled, but every byte of the entropy-coded data is still read,
    so a truncated or corrupt file fails here and not in the classifier); other formats in full.
    """
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        im.load()
    return width, height


def read_checked(path: Path) -> tuple[str, int, int]:
    """(sha256, width, height) of the image file ``path``, from one read of its bytes and one (draft) decode."""
    data = path.read_bytes()
    width, height = image_size(data)
    return hashlib.sha256(data).hexdigest(), width, height


def collect_images(source: ImagerySource, bbox: BBox, store: Path, *, max_images: int | None = None,
                   progress: bool = True) -> ImageCollection:
    """Record every image of ``source`` inside ``bbox`` (a ``BBox`` or a ``geo.area.Area``), without Prefect.

    A folder source reads its images where they are (``path`` absolute) unless it copies; a copy
    goes into ``store`` under a temporary name and is renamed once complete and decodable, and a
    file already there with the expected sha256 (or, without one, that decodes) is kept. Returns
    the images, the failures and the counts (discovered, selected, not_selected, downloaded,
    failed per reason).
    """
    discovered = source.discover(bbox).sort_values("image_id", ignore_index=True)
    candidates, refused = split_refused(discovered)
    candidates, outside = drop_outside_area(candidates, bbox)
    candidates, not_selected = keep_at_most(candidates, max_images)
    collected = store_images(source, candidates, store, progress=progress)
    return counted(collected, discovered=len(discovered), refused=refused, selected=len(candidates),
                   not_selected={**outside, **not_selected})


def split_refused(discovered: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """Discovered rows without a ``failure``, and a failure row for each one with a failure (bad path or position)."""
    problems = discovered["failure"] if "failure" in discovered else pd.Series([None] * len(discovered), dtype=object)
    refused = problems.notna().to_numpy()
    failures = [(str(i), "collect", str(r)) for i, r in zip(discovered.loc[refused, "image_id"], problems[refused])]
    return discovered.loc[~refused].drop(columns=["failure"], errors="ignore").reset_index(drop=True), failures


def drop_outside_area(candidates: pd.DataFrame, area: BBox | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The candidates inside ``area``'s polygon (all of them for a plain box), and how many were dropped for it."""
    if area is None or getattr(area, "polygon", None) is None or not len(candidates):
        return candidates, {}
    inside = area.contains_points(candidates["lon"].to_numpy(float), candidates["lat"].to_numpy(float))
    dropped = int((~inside).sum())
    return candidates.loc[inside].reset_index(drop=True), ({OUTSIDE_AREA: dropped} if dropped else {})


def keep_at_most(candidates: pd.DataFrame, max_images: int | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The first ``max_images`` candidates, and how many were left out for it."""
    if max_images is None or len(candidates) <= max_images:
        return candidates, {}
    return candidates.head(max_images), {"beyond max_images": len(candidates) - max_images}


def _copy_checked(source: ImagerySource, image: dict, final: Path) -> tuple[str, int, int]:
    """Put one image into the store at ``final`` (kept when already complete); its (sha256, width, height)."""
    expected = image.get("sha256")
    expected = None if expected is None or (isinstance(expected, float) and pd.isna(expected)) else expected
    if final.is_file():
        try:
            checked = read_checked(final)
            if expected is None or checked[0] == expected:
                return checked
        except Exception:  # noqa: BLE001 - a damaged file in the store is fetched again
            pass
    partial = final.with_name(f".{final.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        source.fetch(pd.Series(image), partial)
        checked = read_checked(partial)
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, final)
    return checked


def store_images(source: ImagerySource, candidates: pd.DataFrame, store: Path, *,
                 progress: bool = True) -> ImageCollection:
    """Check and record the ``candidates`` (rows of ``source.discover``, with ``origin``); see ``collect_images``.

    In place (a folder source with ``copy`` false) each file is read once where it is: its sha256
    and a draft decode come from the same bytes, ``path`` is the absolute file, and nothing is
    written anywhere. Otherwise each image is fetched into ``store`` (``path`` relative to it).
    """
    in_place = not getattr(source, "copy", True)
    if not in_place:
        store.mkdir(parents=True, exist_ok=True)
    columns = [c for c in candidates.columns if c != "origin"]
    rows = candidates.to_dict("records") if not in_place else None
    ids, origins = candidates["image_id"].astype(str).tolist(), candidates["origin"].astype(str).tolist()

    def one(i: int) -> tuple[str, tuple[str, int, int], datetime]:
        if in_place:
            origin = Path(origins[i])
            if not origin.is_file():
                raise FileNotFoundError(f"{origin} is listed in the metadata table but does not exist")
            return origins[i], read_checked(origin), datetime.now(timezone.utc)
        name = _store_name(ids[i], origins[i])
        return name, _copy_checked(source, rows[i], store / name), datetime.now(timezone.utc)

    def attempt(i: int):
        try:
            return one(i)
        except Exception as exc:  # noqa: BLE001 - recorded per image, the run goes on
            return exc

    # per image only fixed-size numpy cells (no tuple, digest string or datetime object each): at 1M images
    # the Python objects of the results cost ~250 MB beside the candidates (benchmarks/README.md, city)
    n = len(candidates)
    ok = np.zeros(n, bool)
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    fetched = np.zeros(n, "datetime64[us]")
    digests = np.zeros(n, "S64")  # hex sha256: 64 ASCII bytes
    names: list[str | None] | None = None if in_place else [None] * n  # in place the path is the origin
    failures = []
    # reading, hashing and decoding release the GIL: local files are checked by a few threads, in order
    workers = CHECK_THREADS if in_place and n > 1 else 1
    with ThreadPoolExecutor(workers) as pool:
        def outcomes():  # in chunks: never a future per image of a whole city at once
            for start in range(0, n, 1024):
                chunk = range(start, min(n, start + 1024))
                yield from (pool.map(attempt, chunk) if workers > 1 else map(attempt, chunk))

        for i, outcome in enumerate(tqdm(outcomes(), total=n, desc=f"collecting {source.name} images",
                                         unit="img", disable=not progress)):
            if isinstance(outcome, Exception):
                failures.append((ids[i], "collect", f"{_kind(outcome)}: {type(outcome).__name__}: {outcome}"))
                continue
            name, (digest, width[i], height[i]), stamp = outcome
            ok[i], digests[i], fetched[i] = True, digest, np.datetime64(stamp.replace(tzinfo=None), "us")
            if names is not None:
                names[i] = name
    kept = np.flatnonzero(ok)
    images = candidates.iloc[kept][columns].reset_index(drop=True).assign(
        path=[origins[i] for i in kept] if names is None else [names[i] for i in kept],
        width=width[kept], height=height[kept], sha256=[d.decode() for d in digests[kept]],
        fetched_at=pd.DatetimeIndex(fetched[kept]).tz_localize("UTC"))
    del ids, origins, names, digests
    images = conform(images.reindex(columns=[*IMAGES.names]), IMAGES, what="collected images").to_pandas()
    return ImageCollection(images, failures_frame(failures))


def counted(collected: ImageCollection, *, discovered: int, refused: list[tuple[str, str, str]], selected: int,
            not_selected: dict[str, int], unit_failures: list[tuple[str, str, str]] = ()) -> ImageCollection:
    """``collected`` with the refused rows and failed units added to its failures, and its ``counts`` (they add up)."""
    rows = [*unit_failures, *refused, *collected.failures.itertuples(index=False, name=None)]
    failed: dict[str, int] = {}
    for _, _, reason in [*refused, *collected.failures.itertuples(index=False, name=None)]:
        kind = str(reason).split(":", 1)[0]
        failed[kind] = failed.get(kind, 0) + 1
    counts = {"discovered": discovered, "selected": selected, "not_selected": not_selected,
              "downloaded": len(collected.images), "discover_failed": len(refused),
              "download_failed": len(collected.failures), "units_failed": len(unit_failures),
              "failed": dict(sorted(failed.items()))}
    return ImageCollection(collected.images, failures_frame(rows), counts=counts)


def _kind(exc: Exception) -> str:
    """The short reason kind of a failed copy (the start of its failure reason)."""
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, PermissionError):
        return "corrupt image" if not isinstance(exc, (IsADirectoryError, NotADirectoryError)) else "missing file"
    return getattr(exc, "kind", None) or "error"
