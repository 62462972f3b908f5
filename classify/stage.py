"""The classification stage of a run: backbone + heads over the run's image store, in resumable chunks on disk.

The images are sorted by ``image_id`` and cut into chunks of ``chunk_images``
(``plan_chunks``). Each chunk's predictions and failures are written as Parquet files under
``<work>/predictions/<model key>/`` (``classify_chunk``): the failures file first, the
predictions file last, each atomically, so a predictions file marks a complete chunk. Its name
holds a key over the model and head ids and the chunk's image ids and sha256s: a rerun (after a
crash, ``kill -9``, or a plain rerun) classifies only the chunks without a complete file, and
a changed image re-classifies only its chunk. The stage hands on the list of chunk files
(``ClassificationResult``), never a table in memory: peak memory is the backbone and one chunk.

Chunks are independent units of work: ``classify_image_store`` runs them one after another
in this process; a distributed runner runs ``classify_chunk`` per chunk on its workers, each
loading the backbone once per process (``process_models``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd
import pyarrow.parquet as pq

from classify.backbone import Backbone, load_backbone
from classify.checkpoints import serving_heads
from classify.features import FeatureCache
from classify.predict import predict_attributes
from contracts.errors import CityAuditError
from contracts.files import write_atomic
from contracts.results import image_file
from contracts.tables import PREDICTIONS

#: Images per chunk. 2048 bounds the work a crash can lose (about 4 min on a 2-core CPU with the tiny
#: model, a few seconds on a GPU), keeps a chunk's predictions (8 rows per image) at a few MB, and
#: makes the per-chunk fixed cost (decode workers starting, one Prefect task run) small beside the chunk.
DEFAULT_CHUNK_IMAGES = 2048
FAILURE_COLUMNS = ["item_id", "stage", "reason"]


class ModelMismatchError(CityAuditError):
    """A worker's backbone or heads are not the ones the run planned its chunks for."""


@dataclass(frozen=True)
class ChunkPlan:
    """One chunk of images to classify: position, key, and where its files go."""

    index: int
    key: str  # over the model ids and the chunk's image ids + sha256s
    image_ids: tuple[str, ...]
    files: tuple[str, ...]  # absolute image paths, in image_id order
    directory: Path  # <work>/predictions/<model key>
    model_ids: tuple[tuple[str, str], ...]  # (attribute, model id) the chunk is keyed for

    @property
    def predictions(self) -> Path:
        return self.directory / f"chunk-{self.index:05d}-{self.key}.parquet"

    @property
    def failures(self) -> Path:
        return self.directory / f"chunk-{self.index:05d}-{self.key}.failures.parquet"

    def is_complete(self) -> bool:
        """Whether both files are there (the predictions file lands last)."""
        return self.predictions.is_file() and self.failures.is_file()


@dataclass(frozen=True)
class ChunkFiles:
    """A complete chunk on disk: its predictions (PREDICTIONS without run_id) and failures (item_id, stage, reason)."""

    index: int
    predictions: Path
    failures: Path
    images: int
    reused: bool  # True when the files were already complete before this run


@dataclass
class ClassificationResult:
    """What classification hands on: the chunk files in chunk order, and the model it used."""

    chunks: list[ChunkFiles]
    model: dict = field(default_factory=dict)  # name, model_id, trained, weights source, heads

    @property
    def prediction_files(self) -> list[Path]:
        return [c.predictions for c in self.chunks]

    @property
    def failure_files(self) -> list[Path]:
        return [c.failures for c in self.chunks]

    @property
    def reused_chunks(self) -> int:
        return sum(c.reused for c in self.chunks)

    @property
    def reused_images(self) -> int:
        """Images whose predictions came from chunk files of an earlier run."""
        return sum(c.images for c in self.chunks if c.reused)

    @property
    def reused(self) -> bool:
        """True when every chunk was reused (nothing was classified in this run)."""
        return bool(self.chunks) and all(c.reused for c in self.chunks)

    def failures(self) -> pd.DataFrame:
        """Every chunk's failures (one row per image that could not be decoded; small)."""
        parts = [pd.read_parquet(f) for f in self.failure_files]
        parts = [p for p in parts if len(p)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=FAILURE_COLUMNS, dtype=str)


def model_ids_of(backbone: Backbone, heads: Mapping) -> dict[str, str]:
    """Per attribute: backbone content hash + head id (the predictions' ``model_id``)."""
    return {name: f"{backbone.model_id}+{head.head_id}" for name, head in heads.items()}


def model_info(backbone: Backbone, heads: Mapping) -> dict:
    """What ``run.json`` records of the model: backbone, weights, device, heads."""
    model_ids = model_ids_of(backbone, heads)
    return {
        "name": backbone.spec.name,
        "open_clip_name": backbone.spec.open_clip_name,
        "weights": backbone.weights_source,
        "backbone_id": backbone.model_id,
        "backbone_sha256": backbone.weights_sha256,
        "trained": backbone.trained,
        "weights_file_sha256": backbone.weights_file_sha256,  # a --weights file: recorded, and unverified
        "weights_verified": backbone.weights_verified,       # unless $CITY_AUDIT_WEIGHTS_VERIFIED vouches
        "device": str(backbone.device),
        "heads": {name: {"method": head.method, "model_id": model_ids[name]} for name, head in heads.items()},
    }


def _digest(model_ids: Mapping[str, str], pairs=()) -> str:
    digest = hashlib.sha256(json.dumps(dict(model_ids), sort_keys=True).encode())
    for image_id, sha in pairs:
        digest.update(f"{image_id}:{sha}\n".encode())
    return digest.hexdigest()[:16]


def plan_chunks(images: pd.DataFrame, store: Path, model_ids: Mapping[str, str], work: Path,
                chunk_images: int = DEFAULT_CHUNK_IMAGES) -> list[ChunkPlan]:
    """Cut ``images`` (``image_id``, ``path`` relative to ``store``, ``sha256``) into chunks in image_id order.

    Returns one ``ChunkPlan`` per ``chunk_images`` images; their files go under
    ``work/predictions/<key of model_ids>/``. Deterministic: the same images and model give the same plans.
    """
    if chunk_images < 1:
        raise ValueError(f"chunk_images must be at least 1, got {chunk_images}")
    directory = Path(work) / "predictions" / _digest(model_ids)
    ordered = images[["image_id", "path", "sha256"]].assign(image_id=images["image_id"].astype(str))
    ordered = ordered.sort_values("image_id", kind="stable", ignore_index=True)
    frozen_ids = tuple(sorted(model_ids.items()))
    plans = []
    for index, start in enumerate(range(0, len(ordered), chunk_images)):
        rows = ordered.iloc[start:start + chunk_images]
        ids = tuple(rows["image_id"])
        key = _digest(model_ids, zip(ids, rows["sha256"].fillna("").astype(str)))
        plans.append(ChunkPlan(index, key, ids, tuple(str(image_file(store, p)) for p in rows["path"]), directory,
                               frozen_ids))
    return plans


def classify_chunk(plan: ChunkPlan, backbone: Backbone, heads: Mapping, *, batch_size: int = 32,
                   feature_cache: str | os.PathLike | None = None, device_decode: bool = False,
                   progress: bool = False, num_workers: int | None = None) -> ChunkFiles:
    """Classify one chunk unless its files are complete; returns the chunk's files.

    Writes the failures file, then the predictions file (each atomically), so a chunk
    interrupted anywhere is classified again on the next run. Raises ``ModelMismatchError``
    when ``backbone`` and ``heads`` are not the model the chunk was planned for.
    """
    if plan.is_complete():
        return ChunkFiles(plan.index, plan.predictions, plan.failures, len(plan.image_ids), reused=True)
    if tuple(sorted(model_ids_of(backbone, heads).items())) != plan.model_ids:
        raise ModelMismatchError(
            f"chunk {plan.index}: this process's model ({backbone.model_id} on {backbone.device}) is not the one the run "
            "planned for; give every worker the same --model, --weights and --heads files")
    if num_workers is None and multiprocessing.current_process().daemon:
        num_workers = 0  # a daemonic process (a Dask worker by default) may not start decode workers
    plan.directory.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"image_id": list(plan.image_ids), "file": list(plan.files)})
    result = predict_attributes(frame, backbone, heads, batch_size=batch_size, progress=progress,
                                device_decode=device_decode, num_workers=num_workers,
                                feature_cache=FeatureCache(feature_cache, backbone) if feature_cache else None)
    failures = result.failures.rename(columns={"image_id": "item_id"})[FAILURE_COLUMNS].astype(str)
    predictions = result.predictions.cast(PREDICTIONS)
    write_atomic(plan.failures, lambda p: failures.to_parquet(p, index=False))
    write_atomic(plan.predictions, lambda p: pq.write_table(predictions, p))  # lands last: the chunk is complete
    return ChunkFiles(plan.index, plan.predictions, plan.failures, len(plan.image_ids), reused=False)


def remove_stale_chunks(plans: list[ChunkPlan]) -> int:
    """Delete chunk files in the plans' folders that no plan names (images changed or were re-chunked), and
    half-written ones a killed writer left; call it once every chunk is complete. Returns how many."""
    keep = {p for plan in plans for p in (plan.predictions, plan.failures)}
    removed = 0
    for directory in {plan.directory for plan in plans}:
        for path in [*directory.glob("chunk-*.parquet"), *directory.glob(".chunk-*.partial.parquet")]:
            if path not in keep:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


_MODELS: dict[tuple, tuple[Backbone, dict]] = {}
_MODELS_LOCK = threading.Lock()


def process_models(model: str, weights: str | None, device: str | None, heads: str | None) -> tuple[Backbone, dict]:
    """The backbone and serving heads for this process, loaded once per (model, weights, device, heads).

    A Dask worker calls this in every chunk task: the first call loads, the others reuse it, so
    the backbone is never pickled to workers.
    """
    key = (model, weights, device, None if heads is None else str(Path(heads).resolve()))
    with _MODELS_LOCK:
        if key not in _MODELS:
            backbone = load_backbone(model, weights=weights, device=device)
            _MODELS[key] = (backbone, serving_heads(backbone, heads))
        return _MODELS[key]


def classify_image_store(images: pd.DataFrame, store: Path, *, backbone: Backbone, cache_dir: Path,
                         batch_size: int = 32, heads: str | os.PathLike | None = None,
                         feature_cache: str | os.PathLike | None = None, device_decode: bool = False,
                         chunk_images: int = DEFAULT_CHUNK_IMAGES, progress: bool = True) -> ClassificationResult:
    """Predict all 8 attributes for each image (``path`` relative to ``store``) with the run's ``backbone``, chunk by chunk.

    ``heads``: a folder of head checkpoints (``<attribute>.json`` + ``.safetensors``; MHAdapter,
    microCLIP or FAIR-style); attributes without one use zero-shot heads. Chunk files go under
    ``cache_dir/predictions/``; complete ones are reused. ``feature_cache``: a folder keeping
    backbone outputs per image, so other heads can re-run without the backbone.
    ``device_decode``: decode JPEGs on the device (nvJPEG on CUDA). Returns the chunk files.
    """
    built = serving_heads(backbone, heads)
    plans = plan_chunks(images, store, model_ids_of(backbone, built), cache_dir, chunk_images)
    chunks = [classify_chunk(plan, backbone, built, batch_size=batch_size, feature_cache=feature_cache,
                             device_decode=device_decode, progress=progress) for plan in plans]
    remove_stale_chunks(plans)
    return ClassificationResult(chunks, model_info(backbone, built))
