"""What one stage hands the next, besides the tables of ``contracts.tables``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from contracts.tables import IMAGES, failures_frame


@dataclass(frozen=True)
class RunFolder:
    """Where a run keeps everything: ``out`` (the published outputs), its image store and work folder."""

    out: Path
    run_id: str

    @property
    def store(self) -> Path:
        """The image store: one file per copied image (images read in place have absolute paths elsewhere)."""
        return self.out / "images"

    def image_file(self, path: str | os.PathLike) -> Path:
        """The file of an images-table ``path`` of this run (see ``image_file``)."""
        return image_file(self.store, path)

    @property
    def work(self) -> Path:
        """Resume state and caches (manifests, prediction caches, adapted heads)."""
        return self.out / "work"

    @property
    def staging(self) -> Path:
        """Where this run writes its outputs before they replace the previous ones as a whole."""
        return self.out / f".staging-{self.run_id}"

    @property
    def database(self) -> Path:
        """The run database while it is built and published (in the staging folder)."""
        return self.staging / "audit.duckdb"


def image_file(store: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Where the image of an images-table ``path`` is: an absolute ``path`` (an image read in place from the
    user's folder) as it is, a relative one (a copy in the run's image store) inside ``store``.

    Every reader of image files goes through this (classification, adaptation, the map's thumbnails).
    """
    path = Path(path)
    return path if path.is_absolute() else Path(store) / path


def image_href(store: str | os.PathLike, path: str | os.PathLike | None) -> str | None:
    """A link to an image for a page written beside ``store`` (``map.html``): ``<store name>/<path>`` for a copy
    in the store, a ``file://`` URL for an image read in place, None when the file is not there."""
    if not path:
        return None
    file = image_file(store, path)
    if not file.is_file():
        return None
    return file.as_uri() if Path(path).is_absolute() else quote(f"{Path(store).name}/{Path(path).as_posix()}")


@dataclass
class ImageCollection:
    """The collect stage's result: the images now in the store, and the items that failed."""

    images: pd.DataFrame  # the images contract, one row per image (``path``: see ``image_file``)
    failures: pd.DataFrame = field(default_factory=failures_frame)  # item_id, stage, reason
    #: discovered, selected, not_selected (reason -> n), downloaded, failed (reason kind -> n), ...: they add up
    #: (see ``geo.mapillary.counts``); empty when a source does not count
    counts: dict = field(default_factory=dict)
    attribution: str = ""  # the credit line of the source the images came from


@dataclass
class UnitDiscovery:
    """What discovery of one work unit found: candidate records, failure rows, and whether the answer was complete.

    Only a complete discovery (every answer usable, no failure row of the unit itself) is recorded
    in a resume manifest or cached by Prefect; anything else is asked again on the next run.
    """

    unit: str
    records: pd.DataFrame
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    complete: bool = True
    raw: list = field(default_factory=list, repr=False)  # transient: the records as answered


def merge_collections(parts: list[ImageCollection], failures: pd.DataFrame | None = None) -> ImageCollection:
    """One collection from per-unit collections (images sorted by id, one row per id) plus extra ``failures``."""
    images = [p.images for p in parts if len(p.images)]
    failure_parts = [f for f in [*(p.failures for p in parts), failures] if f is not None and len(f)]
    merged = (pd.concat(images, ignore_index=True).drop_duplicates("image_id").sort_values("image_id", ignore_index=True)
              if images else empty_images())
    return ImageCollection(merged, pd.concat(failure_parts, ignore_index=True) if failure_parts else failures_frame())


def empty_images() -> pd.DataFrame:
    """An images table with the contract's columns and types and no rows."""
    return IMAGES.empty_table().to_pandas()
