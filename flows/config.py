"""The typed run configuration: the one definition of a city-audit run's parameters.

``RunConfig`` groups them (area, imagery, roads, model, adaptation, matching, outputs, execution) with
``bbox`` at the top. The ``city-audit run`` options are generated from these fields (same
names, defaults and help: ``flows.cli_options``), the ``city-audit`` flow takes the groups as
its parameters (Prefect renders them as a form and validates ``--param``), and ``run.json``
records ``RunConfig.parameters()``. Adding a parameter is adding one field.

Every value is checked here, in milliseconds and before Prefect starts: unknown names against
the registries, files and folders for existence, heads against the backbone. Importing this
module loads pydantic and the light registries only (no Prefect, torch, pandas or DuckDB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from classify.registry import (BACKBONES, adaptation_methods, check_backbone, check_heads_folder, check_model_name,
                               check_weights)
from classify.schema import ATTRIBUTES
from contracts.errors import CityAuditError, ConfigError
from geo.area import check_area_file, resolve_area
from geo.bbox import DEFAULT_MAX_AREA_KM2
from geo.sources import IMAGERY_SOURCES, check_imagery, check_roads, check_sample_overlap
from warehouse.outputs import check_output_folder
from warehouse.defaults import DEFAULT_CELL_SIZE_M, DEFAULT_HEADING_PENALTY_M, DEFAULT_MAX_DISTANCE_M



def checked(check, *args):
    """``check(*args)``, with a ``CityAuditError`` turned into the ``ValueError`` pydantic reports for the field."""
    try:
        return check(*args)
    except CityAuditError as exc:
        raise ValueError(str(exc)) from None


def option(default: Any = None, help: str = "", *, flag: str | None = None, **kwargs) -> Any:
    """A configuration field: ``help`` is shown by ``--help`` and the Prefect form; ``flag`` is its CLI option
    (default ``--<field-name>``)."""
    extra = {"flag": flag} if flag else {}
    return Field(default, description=help, json_schema_extra=extra or None, **kwargs)


class Group(BaseModel):
    """A group of run parameters: unknown keys are refused, values are checked as they are set."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class AreaConfig(Group):
    max_area_km2: float = option(DEFAULT_MAX_AREA_KM2, f"refuse larger areas (default: {DEFAULT_MAX_AREA_KM2:g})", gt=0)
    area_file: str | None = option(None, "a boundary polygon (GeoJSON, GeoPackage or GeoParquet, any CRS; "
                                         "multipolygons and holes) to audit instead of, or within, --bbox",
                                   flag="--area")

    @field_validator("area_file")
    @classmethod
    def _area_file_exists(cls, area_file: str | None) -> str | None:
        return None if area_file is None else checked(check_area_file, area_file)


class ImageryConfig(Group):
    source: str = option("sample", f"imagery source: {' | '.join(IMAGERY_SOURCES)} (default: sample)")
    images: str | None = option(None, "for --source folder: a folder with images and images.parquet/images.csv")
    max_images: int | None = option(None, "stop after this many images", ge=1)
    allow_outside_paths: bool = option(False, "for --source folder: follow metadata paths that lead outside the folder")
    copy_images: bool = option(False, "for --source folder: copy the images into the run's store (default: read "
                                      "them in place, never writing to the folder)")
    mapillary: dict[str, Any] = option(
        {}, "a Mapillary option, repeatable: discovery=tiles|search, captured_after=2023-01-01, panoramas=yes|no|only, "
            "min_spacing_m=5, thumb_size=1024, search_rpm=8000, token_secret=NAME, ... (docs/mapillary.md); the token "
            "comes from MAPILLARY_ACCESS_TOKEN", flag="--mapillary")

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        return checked(IMAGERY_SOURCES.get, source).name

    @field_validator("copy_images")
    @classmethod
    def _copy_is_for_folders(cls, copy_images: bool, info: ValidationInfo) -> bool:
        if copy_images and info.data.get("source", "folder") != "folder":
            raise ValueError(f"--copy-images is for --source folder; source {info.data['source']!r} always stores "
                             f"its images in the run's image store")
        return copy_images

    @field_validator("images", "mapillary")
    @classmethod
    def _source_can_work(cls, value: Any, info: ValidationInfo) -> Any:
        if "source" not in info.data:  # the source itself was refused
            return value
        if info.field_name == "images":
            checked(check_imagery, info.data["source"], value, {})
            return value
        return checked(check_imagery, info.data["source"], info.data.get("images"), value)


class RoadsConfig(Group):
    roads: str = option("sample", "'sample', a local OSM extract (.osm.pbf), or a GeoParquet/GeoPackage/GeoJSON of road lines")
    road_classes: str | None = option(None, "for .osm.pbf: comma-separated highway values to keep (default: the "
                                            "drivable network, living streets, service and pedestrian streets)")
    max_segment_length_m: float | None = option(None, "for .osm.pbf: split segments longer than this into equal parts "
                                                      "(default: 100)", gt=0)

    @field_validator("roads")
    @classmethod
    def _roads_exist(cls, roads: str) -> str:
        checked(check_roads, roads)
        return roads


class ModelConfig(Group):
    model: str = option("vit-b16", f"backbone: a name from `city-audit models` ({', '.join(BACKBONES)}) or an open_clip "
                                   "ARCH/PRETRAINED pair such as ViT-B-16/dfn2b (default: vit-b16)")
    weights: str | None = option(None, "local checkpoint file for the backbone (default: $CITY_AUDIT_WEIGHTS or download)")
    device: str | None = option(None, "cpu, cuda, cuda:1, mps (default: the best available)")
    batch_size: int = option(32, "images per backbone batch (default: 32)", ge=1)
    heads: str | None = option(None, "folder of trained head checkpoints (city-audit train); zero-shot for the rest")
    feature_cache: str | None = option(None, "folder that keeps backbone outputs per image for re-running heads")
    gpu_decode: bool = option(False, "decode JPEGs on the device (nvJPEG on CUDA)")

    @field_validator("model")
    @classmethod
    def _known_backbone(cls, model: str) -> str:
        return checked(check_model_name, model)

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: str | None, info: ValidationInfo) -> str | None:
        if weights is not None:
            checked(check_weights, weights)
        if "model" in info.data:
            checked(check_backbone, info.data["model"], weights)  # a bare open_clip ARCH needs weights
        return weights

    @field_validator("heads")
    @classmethod
    def _heads_fit(cls, heads: str | None, info: ValidationInfo) -> str | None:
        if heads is not None and "model" in info.data:
            checked(check_heads_folder, heads, info.data["model"])
        return heads


class AdaptationConfig(Group):
    adapt: str | None = option(None, "adapt to this run's own images first (microCLIP or FAIR-style (reconstructed)) "
                                     "and predict with the adapted heads")
    adapt_attributes: list[str] | None = option(None, "attributes to adapt (default: all)")
    epochs: int | None = option(None, "self-training epochs (default 15)", ge=1)
    max_steps: int | None = option(None, "stop after this many optimizer steps (bounded time)", ge=1)
    adapt_batch_size: int | None = option(None, "self-training batch (default 64)", ge=1)
    lr: float | None = option(None, "self-training learning rate (default 1e-4)", gt=0)
    crops: int | None = option(None, "random crops per image (default 8)", ge=1)
    strong: Literal["auto", "randaugment", "geometric"] | None = option(
        None, "student augmentation (default auto: geometric for photometric attributes)")
    seed: int | None = option(None, "self-training seed (default 0)")
    num_workers: int | None = option(None, "decoding worker processes", ge=0)

    @field_validator("adapt")
    @classmethod
    def _known_method(cls, method: str | None) -> str | None:
        if method is not None and method not in adaptation_methods():
            raise ValueError(f"unknown adaptation method {method!r}; choose from {', '.join(adaptation_methods())}")
        return method

    @field_validator("adapt_attributes")
    @classmethod
    def _known_attributes(cls, names: list[str] | None) -> list[str] | None:
        unknown = [n for n in names or [] if n not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; choose from {', '.join(ATTRIBUTES)}")
        return names

    def loop_options(self) -> dict[str, Any]:
        """The ``classify.adapt.AdaptConfig`` overrides that are set (None keeps the reference value)."""
        names = {"epochs": "epochs", "max_steps": "max_steps", "adapt_batch_size": "batch_size", "lr": "lr",
                 "crops": "n_crops", "strong": "strong", "seed": "seed", "num_workers": "num_workers"}
        return {field: getattr(self, name) for name, field in names.items() if getattr(self, name) is not None}


class MatchingConfig(Group):
    max_distance_m: float = option(DEFAULT_MAX_DISTANCE_M, "largest image-to-road distance that counts as a match "
                                                           f"(default: {DEFAULT_MAX_DISTANCE_M:g})", gt=0)
    heading_penalty_m: float = option(DEFAULT_HEADING_PENALTY_M, "a road across a camera's heading counts this many "
                                      f"metres further away when matching (default: {DEFAULT_HEADING_PENALTY_M:g}; "
                                      "0 = plain nearest)", ge=0)


class OutputsConfig(Group):
    force: bool = option(False, "write into an --out folder that holds files city-audit did not write")
    out: str = option("outputs/city-audit", "output folder (default: outputs/city-audit); a rerun replaces "
                                            "its outputs as a whole once the new ones are complete")
    by_year: bool = option(False, "also aggregate each segment per capture year")
    tiles: bool = option(False, "also write GeoParquet partitioned by z14 tile (tiles/segments/tile=.../<run_id>.parquet)")
    cell_size_m: float = option(DEFAULT_CELL_SIZE_M, f"cell size of coverage.tif (default: {DEFAULT_CELL_SIZE_M:g})", gt=0)

    @field_validator("out")
    @classmethod
    def _out_can_be_written(cls, out: str, info: ValidationInfo) -> str:
        checked(check_output_folder, out, info.data.get("force", False))
        return out


DEFAULT_CHUNK_IMAGES = 2048  # = classify.stage.DEFAULT_CHUNK_IMAGES (why 2048: see there)
DEFAULT_DASK_WORKERS = 2


class ExecutionConfig(Group):
    """Where the work runs and in which units: the classification chunks, and the task runner."""

    chunk_images: int = option(DEFAULT_CHUNK_IMAGES, "images per classification chunk: one Parquet file and one "
                               f"task each, the unit a rerun resumes from (default: {DEFAULT_CHUNK_IMAGES})", ge=1)
    task_runner: Literal["local", "dask"] = option(
        "local", "local: this process (default); dask: the collection units and classification chunks run on a Dask "
                 "cluster (every worker must see --out; README 'Scaling out')")
    dask_address: str | None = option(None, "for --task-runner dask: the scheduler of an existing cluster, e.g. "
                                            "tcp://host:8786 (default: start a LocalCluster)")
    dask_workers: int = option(DEFAULT_DASK_WORKERS, "for --task-runner dask without --dask-address: worker processes "
                               f"of the LocalCluster (default: {DEFAULT_DASK_WORKERS})", ge=1)

    @field_validator("dask_address")
    @classmethod
    def _address_for_dask(cls, address: str | None, info: ValidationInfo) -> str | None:
        if address is None:
            return None
        if info.data.get("task_runner") != "dask":
            raise ValueError("a scheduler address needs --task-runner dask")
        if "://" not in address:
            raise ValueError(f"not a Dask scheduler address {address!r}; write it as tcp://host:8786")
        return address


#: The groups of ``RunConfig`` in pipeline order: also the flow's parameters after ``bbox``.
GROUPS: dict[str, type[Group]] = {
    "area": AreaConfig, "imagery": ImageryConfig, "roads": RoadsConfig, "model": ModelConfig,
    "adaptation": AdaptationConfig, "matching": MatchingConfig, "outputs": OutputsConfig,
    "execution": ExecutionConfig,
}


class RunConfig(BaseModel):
    """Every parameter of a ``city-audit`` run, checked: the CLI, the flow, the deployment and ``run.json`` share it."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    area: AreaConfig = AreaConfig()  # before bbox: the area limit applies to it
    bbox: list[float] = Field(None, validate_default=True, description="minlon,minlat,maxlon,maxlat in WGS84, or a JSON list; with --area "
                                                "the part of the area inside it (default: the area's bounds)")
    imagery: ImageryConfig = ImageryConfig()
    roads: RoadsConfig = RoadsConfig()
    model: ModelConfig = ModelConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    matching: MatchingConfig = MatchingConfig()
    outputs: OutputsConfig = OutputsConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("bbox", mode="before")
    @classmethod
    def _parse_bbox(cls, bbox: Any, info: ValidationInfo) -> list[float]:
        area = info.data.get("area")
        limit = area.max_area_km2 if area is not None else DEFAULT_MAX_AREA_KM2
        return resolve_area(bbox, area.area_file if area is not None else None, limit).as_list()

    @field_validator("imagery", "roads")
    @classmethod
    def _sample_covers_the_bbox(cls, group: ImageryConfig | RoadsConfig, info: ValidationInfo):
        uses_sample = group.source == "sample" if info.field_name == "imagery" else group.roads == "sample"
        if uses_sample and "bbox" in info.data:
            checked(check_sample_overlap, info.data["bbox"], "images" if info.field_name == "imagery" else "roads")
        return group

    def parameters(self) -> dict[str, Any]:
        """The configuration as plain JSON values, grouped as the flow takes it (what ``run.json`` records)."""
        return self.model_dump(mode="json")

    def flow_parameters(self) -> dict[str, Any]:
        """Keyword arguments of the ``city-audit`` flow."""
        return {"bbox": self.bbox, **{name: getattr(self, name) for name in GROUPS}}

    def place(self):
        """The run's area: a ``geo.bbox.BBox``, or a ``geo.area.Area`` (a BBox with the polygon) with ``--area``."""
        return resolve_area(self.bbox, self.area.area_file, self.area.max_area_km2)

    @property
    def out_dir(self) -> Path:
        return Path(self.outputs.out).expanduser().resolve()


def cli_flag(group: str, field: str) -> str:
    """The ``city-audit run`` option of a configuration field, e.g. ``--max-distance-m``."""
    if group == "bbox":
        return "--bbox"
    extra = GROUPS[group].model_fields[field].json_schema_extra or {}
    return extra.get("flag") or f"--{field.replace('_', '-')}"


def build_config(values: dict[str, Any], *, flag_names: bool = True) -> RunConfig:
    """A checked ``RunConfig`` from ``{"bbox": ..., group: {field: value}}``; ``ConfigError`` names the bad field.

    ``flag_names``: name the field as its command-line option (``--model``) rather than its
    parameter path (``model.model``) in the error.
    """
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:  # the first error is the one to fix first
        error = exc.errors()[0]
        location = [str(part) for part in error["loc"]]
        group, field = (location + ["", ""])[:2]
        if group in GROUPS and field not in GROUPS[group].model_fields:  # a check of the group as a whole
            field = next(iter(GROUPS[group].model_fields))
        name = (cli_flag(group, field) if flag_names and (group == "bbox" or group in GROUPS)
                else ".".join(location) or "configuration")
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if isinstance(cause, Exception) else error["msg"]
        got = error.get("input")
        message = message.removeprefix("Value error, ")
        shown = ("" if not isinstance(got, (str, int, float, list)) or str(got) in message
                 else f" (got {json.dumps(got, default=str)})")
        raise ConfigError(name, f"{message}{shown}") from None


def _owners() -> dict[str, str]:
    return {field: group for group, model in GROUPS.items() for field in model.model_fields}


def run_config(**options: Any) -> RunConfig:
    """A checked ``RunConfig`` from flat options named as on the command line (``bbox``, ``source``, ``model``,
    ``out``, ...): each field name belongs to exactly one group."""
    owners = _owners()
    grouped: dict[str, Any] = {"bbox": options.pop("bbox", None)}
    for name, value in options.items():
        if name not in owners:
            raise ConfigError(name, f"unknown run option; known: {', '.join(sorted(owners))}")
        grouped.setdefault(owners[name], {})[name] = value
    return build_config(grouped)
