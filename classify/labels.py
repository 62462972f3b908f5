"""Labelled images for training and evaluating heads: two readers and a stratified split.

Layouts (``read_labels`` picks by what ``data`` is):

* Global StreetScapes manual labels (methods §5.1-5.2), ``data`` a directory::

      <root>/train/<attribute>.csv     # columns: img_path (relative to <root>) or uuid, and <attribute>
      <root>/test/<attribute>.csv
      <root>/img/<n>/<uuid>.jpeg       # resolved once through an index when only ``uuid`` is given

* Your own labels, ``data`` a CSV file with a header ``path,label`` (paths relative to the CSV's folder
  or absolute). Optional column ``image_id``; default the file stem.

Every label maps onto the attribute's fixed class list from ``classify.schema`` (never the
sorted strings of one file, pitfall MHA-P7); an unknown value raises ``LabelFileError`` naming
the file, the row and the value.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import CityAuditError
from classify.schema import Attribute, UnknownLabelError

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class LabelFileError(CityAuditError, ValueError):
    """A label file that cannot be used: missing, without the needed columns, or with an unknown label."""


@dataclass(frozen=True)
class LabeledImages:
    """Images with class ids for one attribute; ``labels[i]`` indexes ``attribute.classes``."""

    attribute: Attribute
    image_ids: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "LabeledImages":
        """The images at ``indices``, in that order."""
        indices = list(indices)
        return LabeledImages(self.attribute, tuple(self.image_ids[i] for i in indices),
                             tuple(self.files[i] for i in indices), tuple(self.labels[i] for i in indices),
                             self.source)

    def class_counts(self) -> list[int]:
        """Images per class, in class order (zeros included)."""
        counts = [0] * len(self.attribute.classes)
        for y in self.labels:
            counts[y] += 1
        return counts


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise LabelFileError(f"label file {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _class_id(attribute: Attribute, value: str, path: Path, row: int) -> int:
    try:
        return attribute.class_index(value)
    except UnknownLabelError as exc:
        raise LabelFileError(f"{path}: row {row}: {exc}") from None


def _uuid_index(root: Path) -> dict[str, Path]:
    """uuid -> image file under ``root/img`` (any depth), built once per reader call."""
    return {p.stem: p for p in (root / "img").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}


def read_gss_split(root: str | Path, attribute: Attribute, split: str = "train") -> LabeledImages:
    """Read ``<root>/<split>/<attribute>.csv`` of the Global StreetScapes manual-label layout.

    Uses ``img_path`` (relative to ``root``) when present, else ``uuid`` resolved under
    ``root/img``. Returns the labelled images in file order.
    """
    if split not in SPLITS:
        raise LabelFileError(f"unknown split {split!r}; choose from {SPLITS}")
    root = Path(root)
    path = root / split / f"{attribute.name}.csv"
    columns, rows = _rows(path)
    if attribute.name not in columns:
        raise LabelFileError(f"{path}: no column {attribute.name!r} (columns: {columns})")
    if "img_path" not in columns and "uuid" not in columns:
        raise LabelFileError(f"{path}: needs an 'img_path' or a 'uuid' column (columns: {columns})")
    index = _uuid_index(root) if "img_path" not in columns else {}
    ids, files, labels = [], [], []
    for row_number, row in enumerate(rows, start=2):  # row 1 is the header
        if "img_path" in columns:
            file = root / row["img_path"].strip()
            image_id = Path(row["img_path"]).stem
        else:
            image_id = row["uuid"].strip()
            if image_id not in index:
                raise LabelFileError(f"{path}: row {row_number}: no image for uuid {image_id!r} under {root / 'img'}")
            file = index[image_id]
        labels.append(_class_id(attribute, row[attribute.name], path, row_number))
        ids.append(image_id)
        files.append(str(file))
    return LabeledImages(attribute, tuple(ids), tuple(files), tuple(labels), source=str(path))


def read_path_label_csv(path: str | Path, attribute: Attribute) -> LabeledImages:
    """Read a plain ``path,label`` CSV (optional ``image_id``); relative paths resolve against its folder."""
    path = Path(path)
    columns, rows = _rows(path)
    missing = {"path", "label"} - set(columns)
    if missing:
        raise LabelFileError(f"{path}: missing column(s) {sorted(missing)}; expected a header 'path,label'")
    ids, files, labels = [], [], []
    for row_number, row in enumerate(rows, start=2):
        file = Path(row["path"].strip())
        file = file if file.is_absolute() else path.parent / file
        labels.append(_class_id(attribute, row["label"], path, row_number))
        ids.append((row.get("image_id") or "").strip() or file.stem)
        files.append(str(file))
    return LabeledImages(attribute, tuple(ids), tuple(files), tuple(labels), source=str(path))


def read_labels(data: str | Path, attribute: Attribute, split: str = "train") -> LabeledImages:
    """A GSS root directory (``split`` picks train/test) or a ``path,label`` CSV file."""
    data = Path(data)
    if data.is_dir():
        return read_gss_split(data, attribute, split)
    if data.suffix.lower() == ".csv":
        return read_path_label_csv(data, attribute)
    raise LabelFileError(f"{str(data)!r} is neither a Global StreetScapes folder nor a .csv file")


def stratified_split(labels, val_fraction: float = 0.2, seed: int = 42) -> tuple[list[int], list[int]]:
    """Per-class seeded shuffle; ``val_fraction`` of each class (at least 1) goes to validation.

    A class with a single image stays in training only. Returns sorted (train, val) indices.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, y in enumerate(labels):
        by_class[int(y)].append(index)
    rng = random.Random(seed)
    train, val = [], []
    for y in sorted(by_class):
        members = by_class[y][:]
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction)) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: the identity of an image, whatever its name or folder."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def deduplicate(data: LabeledImages) -> tuple[LabeledImages, int]:
    """``data`` without repeated images (same bytes, whatever the file name), first row kept.

    Returns (deduplicated images, number of rows dropped). The same image labelled with two
    different classes raises ``LabelFileError`` naming both rows' files: such a label file is
    ambiguous and must be fixed, not trained on.
    """
    seen: dict[str, int] = {}
    keep: list[int] = []
    for index, path in enumerate(data.files):
        try:
            digest = file_digest(path)
        except OSError as exc:
            raise LabelFileError(f"{data.source}: image {path!r} cannot be read ({exc})") from None
        if digest in seen:
            first = seen[digest]
            if data.labels[first] != data.labels[index]:
                classes = data.attribute.classes
                raise LabelFileError(f"{data.source}: {data.files[index]!r} ({classes[data.labels[index]]}) is the same "
                                     f"image as {data.files[first]!r} ({classes[data.labels[first]]}) with another "
                                     f"label; fix the label file")
            continue
        seen[digest] = index
        keep.append(index)
    return data.subset(keep), len(data) - len(keep)
