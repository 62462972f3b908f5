"""The fake Mapillary server serving real JPEGs: the Global StreetScapes sample images, by Mapillary id.

``gss_sample_entities(sample)`` turns the Mapillary rows of ``shared/sample/gss/sample_mapping.csv`` into
entity records (id = ``orig_id``, position, heading, capture time, panorama flag, sequence); a
``PhotoMapillary`` answers the thumbnail of each with the sample's real JPEG bytes instead of a
generated colour patch, so the images a test downloads are the dataset's own.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fake_mapillary.server import FakeMapillary


def gss_sample_entities(sample: Path) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """(entity records, Mapillary id -> JPEG file) for the sample rows that are Mapillary images with a file."""
    entities, files = [], {}
    with (sample / "sample_mapping.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["source"] != "Mapillary" or not row["jpeg_file"]:
                continue
            captured = datetime.fromisoformat(row["datetime_local"])
            entities.append({"id": row["orig_id"], "captured_at": int(captured.timestamp() * 1000),
                             "compass_angle": float(row["heading"]), "sequence": row["sequence_id"],
                             "is_pano": row["projection_type"] == "spherical", "creator": {"id": "1"},
                             "camera_type": row["camera_type"] or None,
                             "geometry": {"type": "Point", "coordinates": [float(row["lon"]), float(row["lat"])]}})
            files[row["orig_id"]] = sample / row["jpeg_file"]
    return entities, files


class PhotoMapillary(FakeMapillary):
    """``FakeMapillary`` whose thumbnails are the given JPEG files (any size asked for gets the file as it is)."""

    def __init__(self, images: list[dict[str, Any]], files: dict[str, Path], **kwargs) -> None:
        super().__init__(images, **kwargs)
        self._files = {key: Path(value).read_bytes() for key, value in files.items()}

    def thumbnail(self, image_id: str, size: str, query: dict[str, str]) -> tuple[int, bytes]:
        status, body = super().thumbnail(image_id, size, query)
        if status == 200 and image_id in self._files:
            return 200, self._files[image_id]
        return status, body
