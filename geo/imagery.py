"""Imagery sources: find the images inside a bounding box and copy them into a run's image store.

A source answers two questions: which images lie in a bbox (``discover``, a DataFrame in the
``images`` contract plus an ``origin`` column saying where the bytes are) and how to get one
image's bytes onto disk (``fetch``). ``collect_images`` does the rest the same way for every
source: skip images already in the store, write to a temporary name, check that the file
decodes, record its size and sha256, rename, and put every failure in a failures table.

Sources are registered by name in ``SOURCES``: ``sample`` (the bundled Stuttgart area),
``folder`` (a local folder with a metadata table) and ``mapillary`` (Mapillary API v4, see
``geo.mapillary``; it also offers per-tile steps that the flow maps).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from geo.bbox import BBox
from warehouse.schema import IMAGES, IMAGES_REQUIRED, ContractError, conform

SAMPLE_AREA = Path(__file__).parent / "sample_area" / "stuttgart"
METADATA_NAMES = ("images.parquet", "images.csv")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class ImagerySourceError(RuntimeError):
    """A source that cannot be used (missing folder or metadata, unknown source name)."""


class ImagerySource(Protocol):
    name: str
    attribution: str

    def discover(self, bbox: BBox) -> pd.DataFrame:
        """Images in the bbox: the ``images`` contract columns plus ``origin``."""

    def fetch(self, image: pd.Series, destination: Path) -> None:
        """Write the bytes of one image (a row of ``discover``) to ``destination``."""


@dataclass
class LocalFolderSource:
    """Images in a local folder, described by ``images.parquet`` or ``images.csv`` in it.

    The metadata table follows the ``images`` contract; ``image_id``, ``lon``, ``lat`` and
    ``path`` (relative to the folder) are required, the other columns are optional.

    Every row ends as an image or a failure row: a row without coordinates ("no geometry"), with
    coordinates out of range, without a path, or whose path leads outside the folder once
    resolved (``../x.jpg``, an absolute path, a symlink pointing out) is a failure with that
    reason. ``allow_outside=True`` is the user's opt-in to follow paths outside the folder.
    Rows outside the bbox are not part of the area and are left out of ``discover``.
    """

    folder: Path
    name: str = "folder"
    attribution: str = "images from a local folder; check their licence before publishing"
    allow_outside: bool = False

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise ImagerySourceError(f"image folder {str(self.folder)!r} does not exist; pass an existing folder with --images")
        found = [self.folder / n for n in METADATA_NAMES if (self.folder / n).is_file()]
        if not found:
            raise ImagerySourceError(
                f"image folder {str(self.folder)!r} has no {' or '.join(METADATA_NAMES)}; add a metadata table with "
                f"columns {', '.join(IMAGES_REQUIRED)} (and optionally captured_at, compass_angle, is_pano, ...)"
            )
        self.metadata_file = found[0]

    def _read_metadata(self) -> pd.DataFrame:
        if self.metadata_file.suffix == ".parquet":
            frame = pd.read_parquet(self.metadata_file)
        else:
            frame = pd.read_csv(self.metadata_file, dtype={"image_id": str, "sequence_id": str})
        try:
            table = conform(frame, IMAGES, IMAGES_REQUIRED, what=str(self.metadata_file))
        except ContractError as exc:
            raise ImagerySourceError(str(exc)) from None
        images = table.to_pandas()
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
        attribution="images © Mapillary contributors, CC BY-SA 4.0 (via the Global StreetScapes sample)",
    )


def mapillary_source(options=None) -> ImagerySource:
    """Mapillary API v4 (``options``: a dict of ``geo.mapillary.MapillaryOptions`` fields)."""
    from geo.mapillary import MapillarySource  # imported on use: the other sources need none of its libraries

    return MapillarySource(options)


SOURCES: dict[str, Callable[..., ImagerySource]] = {
    "sample": lambda images=None, options=None: sample_source(),
    "folder": lambda images=None, options=None: LocalFolderSource(
        _require(images, "--images FOLDER for source 'folder'"),
        allow_outside=bool((options or {}).get("allow_outside", False))),
    "mapillary": lambda images=None, options=None: mapillary_source(options),
}


def _require(value, what: str):
    if not value:
        raise ImagerySourceError(f"missing {what}")
    return value


def make_source(name: str, images: str | os.PathLike | None = None, options: dict | None = None) -> ImagerySource:
    """Build a registered imagery source by name (``sample``, ``folder``, ``mapillary``); ``options`` are source-specific."""
    try:
        factory = SOURCES[name]
    except KeyError:
        raise ImagerySourceError(f"unknown imagery source {name!r}; choose from {', '.join(SOURCES)}") from None
    return factory(images=images, options=options)


@dataclass
class ImageCollection:
    images: pd.DataFrame  # the images contract, one row per image now in the store
    failures: pd.DataFrame  # item_id, stage, reason
    #: discovered, selected, not_selected (reason -> n), downloaded, failed (reason kind -> n), ...: see
    #: ``geo.mapillary.counts`` (they add up); empty when a source does not count
    counts: dict = field(default_factory=dict)


def _store_name(image_id: str, origin: str) -> str:
    stem = image_id if _SAFE_ID.match(image_id) else hashlib.sha256(image_id.encode()).hexdigest()[:32]
    suffix = Path(origin).suffix.lower() or ".jpg"
    return f"{stem}{suffix}"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height; raises if the file is not a complete, decodable image."""
    with Image.open(path) as im:
        im.load()  # full decode: truncated or corrupt files fail here, not in the classifier
        return im.size


def collect_images(source: ImagerySource, bbox: BBox, store: Path, *, max_images: int | None = None,
                   progress: bool = True) -> ImageCollection:
    """Put every image of ``source`` inside ``bbox`` into the image store folder ``store``.

    Idempotent: a file already in the store with the expected sha256 (or, without one, that
    decodes) is kept. Each file is written under a temporary name and renamed only once it is
    complete and decodes. Returns the images (``path`` relative to ``store``) and the failures.
    """
    store.mkdir(parents=True, exist_ok=True)
    discovered = source.discover(bbox).sort_values("image_id", ignore_index=True)
    problems = discovered["failure"] if "failure" in discovered else pd.Series([None] * len(discovered), dtype=object)
    refused = problems.notna().to_numpy()
    failures = [(str(i), "collect", str(r)) for i, r in zip(discovered.loc[refused, "image_id"], problems[refused])]
    candidates = discovered.loc[~refused].drop(columns=["failure"], errors="ignore").reset_index(drop=True)
    not_selected = {}
    if max_images is not None and len(candidates) > max_images:
        not_selected["beyond max_images"] = len(candidates) - max_images
        candidates = candidates.head(max_images)
    kept = []
    for _, image in tqdm(candidates.iterrows(), total=len(candidates), desc=f"collecting {source.name} images",
                         unit="img", disable=not progress):
        name = _store_name(str(image["image_id"]), str(image["origin"]))
        final = store / name
        try:
            expected = image.get("sha256")
            if not (final.is_file() and (pd.isna(expected) or file_sha256(final) == expected)):
                partial = final.with_name(f".{name}.partial")
                partial.unlink(missing_ok=True)
                source.fetch(image, partial)
                try:
                    _image_size(partial)
                except Exception:
                    partial.unlink(missing_ok=True)
                    raise
                os.replace(partial, final)
            width, height = _image_size(final)
        except Exception as exc:  # noqa: BLE001 - recorded per image, the run goes on
            failures.append((str(image["image_id"]), "collect", f"{_kind(exc)}: {type(exc).__name__}: {exc}"))
            continue
        record = image.drop(labels=["origin"]).to_dict()
        record.update(path=name, width=width, height=height, sha256=file_sha256(final),
                      fetched_at=datetime.now(timezone.utc))
        kept.append(record)
    images = conform(pd.DataFrame(kept, columns=[*IMAGES.names]), IMAGES, what="collected images").to_pandas()
    failed: dict[str, int] = {}
    for _, _, reason in failures:
        kind = reason.split(":", 1)[0]
        failed[kind] = failed.get(kind, 0) + 1
    counts = {"discovered": len(discovered), "selected": len(candidates), "not_selected": not_selected,
              "downloaded": len(images), "discover_failed": int(refused.sum()),
              "download_failed": len(failures) - int(refused.sum()), "failed": dict(sorted(failed.items()))}
    return ImageCollection(images, pd.DataFrame(failures, columns=["item_id", "stage", "reason"]), counts)


def _kind(exc: Exception) -> str:
    """The short reason kind of a failed copy (the start of its failure reason)."""
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, PermissionError):
        return "corrupt image" if not isinstance(exc, (IsADirectoryError, NotADirectoryError)) else "missing file"
    return getattr(exc, "kind", None) or "error"
