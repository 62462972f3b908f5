"""What one stage hands the next, besides the tables of ``contracts.tables``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.files import write_atomic
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
    """The collect stage's result: the images now in the store, and the items that failed.

    The images table is either in memory (``images``) or, once the flow's collect stage has put it
    there (``on_disk``), a Parquet file of the images contract in the run's work folder
    (``images_file``, ``images`` None): the stages after it read what they need from the file
    (``image_table`` / ``image_frame`` by column, ``image_batches``), so a run does not hold the
    whole table between stages.
    """

    images: pd.DataFrame | None  # the images contract, one row per image (``path``: see ``image_file``)
    failures: pd.DataFrame = field(default_factory=failures_frame)  # item_id, stage, reason
    #: discovered, selected, not_selected (reason -> n), downloaded, failed (reason kind -> n), ...: they add up
    #: (see ``geo.mapillary.counts``); empty when a source does not count
    counts: dict = field(default_factory=dict)
    attribution: str = ""  # the credit line of the source the images came from
    images_file: Path | None = None  # the images table on disk (Parquet, the images contract) when ``images`` is None

    def on_disk(self, path: str | os.PathLike) -> "ImageCollection":
        """This collection with its images table written to ``path`` (atomically) and no longer in memory."""
        if self.images is None:
            return self
        table = pa.Table.from_pandas(self.images[list(IMAGES.names)], preserve_index=False)
        table = table.replace_schema_metadata(None).cast(IMAGES)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda partial: pq.write_table(table, partial, compression="zstd"))
        return replace(self, images=None, images_file=path)

    def image_table(self, columns: list[str] | None = None) -> pa.Table:
        """The images table (or some ``columns`` of it) as Arrow."""
        if self.images is not None:
            frame = self.images if columns is None else self.images[columns]
            return pa.Table.from_pandas(frame, preserve_index=False)
        return pq.read_table(self.images_file, columns=columns)

    def image_frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The images table (or some ``columns`` of it) as pandas, with the contract's types."""
        if self.images is not None:
            return self.images if columns is None else self.images[columns]
        return pq.read_table(self.images_file, columns=columns).to_pandas()

    def image_source(self):
        """What ``warehouse.build`` loads: the images frame, or the Parquet file DuckDB reads itself."""
        return self.images if self.images is not None else self.images_file

    @property
    def image_count(self) -> int:
        return len(self.images) if self.images is not None else pq.read_metadata(self.images_file).num_rows


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
