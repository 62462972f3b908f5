"""Where images and roads come from, by name: the registries of imagery and road sources.

Light on purpose (no pandas, PIL or HTTP at import): the command line reads the choices from
here and ``check_*`` validate a run's source options in milliseconds, before any work starts.
Each entry builds or loads its source on first use.

Imagery sources: ``sample`` (the bundled Stuttgart area), ``folder`` (a local folder with a
metadata table), ``mapillary`` (Mapillary API v4). Road sources: ``sample`` (the bundled OSM
edges), ``osm-pbf`` (a local OpenStreetMap extract) and ``vector-file`` (GeoParquet, GeoPackage,
GeoJSON, ... of road lines), chosen by the value of ``--roads``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from contracts.errors import CityAuditError
from contracts.notices import OSM_ATTRIBUTION
from contracts.registry import Registry
from contracts.sample import SAMPLE_EXTENT, sample_extent_text

SAMPLE_AREA = Path(__file__).parent / "sample_area" / "stuttgart"
METADATA_NAMES = ("images.parquet", "images.csv")
IMAGES_REQUIRED_COLUMNS = ("image_id", "lon", "lat", "path")


class ImagerySourceError(CityAuditError, RuntimeError):
    """An imagery source that cannot be used (unknown name, missing folder or metadata, options for another source)."""


class RoadSourceError(CityAuditError, RuntimeError):
    """Roads that cannot be read or have no line geometry."""


@dataclass(frozen=True)
class ImagerySourceSpec:
    """A registered imagery source: ``build(images, options, allow_outside, copy_images)`` makes it (importing its
    module then)."""

    name: str
    summary: str
    build: Callable[[str | None, Mapping[str, Any] | None, bool, bool], Any]
    needs_folder: bool = False
    takes_options: bool = False


def _sample(images=None, options=None, allow_outside=False, copy_images=False):
    from geo.imagery import sample_source

    return sample_source()


def _folder(images=None, options=None, allow_outside=False, copy_images=False):
    from geo.imagery import LocalFolderSource

    return LocalFolderSource(check_images_folder(images), allow_outside=allow_outside, copy=copy_images)


def _mapillary(images=None, options=None, allow_outside=False, copy_images=False):
    from geo.mapillary.source import MapillarySource

    return MapillarySource(options)


IMAGERY_SOURCES: Registry[ImagerySourceSpec] = Registry("imagery source", ImagerySourceError)
for _spec in (
    ImagerySourceSpec("sample", "the bundled Stuttgart sample area (19 Mapillary images)", _sample),
    ImagerySourceSpec("folder", "a local folder of images with images.parquet or images.csv (--images)", _folder,
                      needs_folder=True),
    ImagerySourceSpec("mapillary", "Mapillary API v4 (needs MAPILLARY_ACCESS_TOKEN; -m options)", _mapillary,
                      takes_options=True),
):
    IMAGERY_SOURCES.register(_spec.name, _spec)


def check_images_folder(images: str | os.PathLike | None) -> Path:
    """``images`` as an existing folder holding a metadata table; ``ImagerySourceError`` saying what to add otherwise."""
    if not images:
        raise ImagerySourceError("missing --images FOLDER for source 'folder' (a folder with images.parquet or images.csv)")
    folder = Path(images).expanduser().resolve()
    if not folder.is_dir():
        raise ImagerySourceError(f"image folder {str(folder)!r} does not exist; pass an existing folder with --images")
    if not any((folder / name).is_file() for name in METADATA_NAMES):
        raise ImagerySourceError(
            f"image folder {str(folder)!r} has no {' or '.join(METADATA_NAMES)}; add a metadata table with "
            f"columns {', '.join(IMAGES_REQUIRED_COLUMNS)} (and optionally captured_at, compass_angle, is_pano, ...)")
    return folder


def check_imagery(source: str, images: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate an imagery source with its options without building it; returns the options with typed values."""
    spec = IMAGERY_SOURCES.get(source)
    if spec.needs_folder:
        check_images_folder(images)
    elif images:
        raise ImagerySourceError(f"--images is for source 'folder'; source {source!r} does not read a folder")
    if options and not spec.takes_options:
        raise ImagerySourceError(f"Mapillary options (-m) need --source mapillary, not {source!r}")
    if not spec.takes_options:
        return {}
    from geo.mapillary.options import MapillaryOptions

    typed = MapillaryOptions.from_mapping(options)
    return {name: getattr(typed, name) for name in options or {}}


@dataclass(frozen=True)
class RoadSourceSpec:
    """A registered road source: which ``--roads`` values it ``accepts`` and how it ``load``s segments."""

    name: str
    summary: str
    accepts: Callable[[str], bool]
    load: Callable[..., Any]  # (bbox, roads, road_classes, max_segment_length_m) -> segments
    attribution: Callable[[str], str]  # the credit line for roads read from this value
    is_file: bool = True



def _is_pbf(roads: str) -> bool:
    return str(roads).lower().endswith(".pbf")


def _load_sample(bbox, roads, road_classes=None, max_segment_length_m=None):
    from geo.roads import read_road_lines

    return read_road_lines(bbox, SAMPLE_AREA / "roads.parquet", "sample")


def _load_pbf(bbox, roads, road_classes=None, max_segment_length_m=None):
    from geo.osm import DEFAULT_MAX_SEGMENT_LENGTH_M, DEFAULT_ROAD_CLASSES, read_osm_road_segments

    return read_osm_road_segments(roads, bbox, road_classes=road_classes or DEFAULT_ROAD_CLASSES,
                                  max_segment_length_m=max_segment_length_m or DEFAULT_MAX_SEGMENT_LENGTH_M)


def _load_vector(bbox, roads, road_classes=None, max_segment_length_m=None):
    from geo.roads import read_road_lines

    return read_road_lines(bbox, Path(roads).expanduser(), roads)


ROAD_SOURCES: Registry[RoadSourceSpec] = Registry("road source", RoadSourceError)
for _road in (
    RoadSourceSpec("sample", "the bundled OSM road edges around the sample images", lambda r: str(r) == "sample",
                   _load_sample, lambda r: OSM_ATTRIBUTION, is_file=False),
    RoadSourceSpec("osm-pbf", "a local OpenStreetMap extract (.osm.pbf), split into segments", _is_pbf, _load_pbf,
                   lambda r: OSM_ATTRIBUTION),
    RoadSourceSpec("vector-file", "a GeoParquet/GeoPackage/GeoJSON/... of road lines", lambda r: True, _load_vector,
                   lambda r: f"roads from {r}; check their licence before publishing"),
):
    ROAD_SOURCES.register(_road.name, _road)


def road_source_for(roads: str | os.PathLike) -> RoadSourceSpec:
    """The road source that reads ``roads`` (``'sample'``, a ``.osm.pbf`` path or another vector file)."""
    return next(spec for spec in ROAD_SOURCES.values() if spec.accepts(str(roads)))


def check_roads(roads: str | os.PathLike) -> RoadSourceSpec:
    """Validate ``--roads`` without reading it: ``'sample'`` or an existing file; returns its source."""
    spec = road_source_for(roads)
    if spec.is_file and not Path(roads).expanduser().is_file():
        raise RoadSourceError(f"road file {str(Path(roads).expanduser())!r} does not exist; pass 'sample', "
                                f"a local .osm.pbf extract or a GeoParquet/GeoPackage/GeoJSON of road lines")
    return spec


def check_sample_overlap(bbox: list[float] | tuple[float, ...], what: str) -> None:
    """Refuse a bbox that the bundled sample (``what``: "imagery" or "roads") cannot have anything in."""
    min_lon, min_lat, max_lon, max_lat = bbox
    s_min_lon, s_min_lat, s_max_lon, s_max_lat = SAMPLE_EXTENT
    if max_lon < s_min_lon or min_lon > s_max_lon or max_lat < s_min_lat or min_lat > s_max_lat:
        extent = sample_extent_text()
        error = RoadSourceError if what == "roads" else ImagerySourceError
        raise error(
            f"the bundled sample {what} cover only {extent} (Stuttgart-West), and this bbox lies outside it: "
            f"choose a bbox that overlaps it, or other sources (--source folder|mapillary, --roads FILE)")
