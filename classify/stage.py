"""The classification stage of a run: backbone + heads over the run's image store, resumable.

``classify_image_store`` takes the run's loaded backbone, the heads of ``heads`` (a folder of
checkpoints) and zero-shot heads for the other attributes, classifies every image once, and
keeps the predictions in a Parquet cache keyed by model and head ids and the image set, so a
rerun with the same model, heads and images skips the image passes entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from classify.backbone import Backbone
from classify.checkpoints import serving_heads
from classify.features import FeatureCache
from classify.predict import predict_attributes
from contracts.files import write_atomic

@dataclass
class ClassificationResult:
    predictions: pa.Table  # predictions contract without run_id
    failures: pd.DataFrame  # item_id, stage, reason
    model: dict = field(default_factory=dict)  # name, model_id, trained, weights source, heads
    reused: bool = False  # True when the cached predictions were reused


def _cache_key(model_ids: dict[str, str], images: pd.DataFrame) -> str:
    digest = hashlib.sha256(json.dumps(model_ids, sort_keys=True).encode())
    for image_id, sha in sorted(zip(images["image_id"].astype(str), images["sha256"].fillna(""))):
        digest.update(f"{image_id}:{sha}\n".encode())
    return digest.hexdigest()


def classify_image_store(images: pd.DataFrame, store: Path, *, backbone: Backbone,
                         batch_size: int = 32, cache_dir: Path | None = None,
                         heads: str | os.PathLike | None = None, feature_cache: str | os.PathLike | None = None,
                         device_decode: bool = False, progress: bool = True) -> ClassificationResult:
    """Predict all 8 attributes for each image (``path`` relative to ``store``) with the run's ``backbone``.

    ``heads``: a folder of head checkpoints (``<attribute>.json`` + ``.safetensors``; MHAdapter,
    microCLIP or FAIR-style); attributes without one use zero-shot heads. With ``cache_dir``, predictions are written
    there and reused when the model, the heads and the images (ids and sha256) are unchanged.
    ``feature_cache``: a folder keeping backbone outputs per image, so other heads can re-run
    without the backbone. ``device_decode``: decode JPEGs on the device (nvJPEG on CUDA).
    """
    heads = serving_heads(backbone, heads)
    model_ids = {name: f"{backbone.model_id}+{head.head_id}" for name, head in heads.items()}
    info = {
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
    cache = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = cache_dir / f"predictions-{_cache_key(model_ids, images)[:16]}.parquet"
        failures_cache = cache.with_suffix(".failures.parquet")
        if cache.is_file() and failures_cache.is_file():
            return ClassificationResult(pq.read_table(cache), pd.read_parquet(failures_cache), info, reused=True)

    frame = pd.DataFrame({"image_id": images["image_id"], "file": [str(store / p) for p in images["path"]]})
    result = predict_attributes(frame, backbone, heads, batch_size=batch_size, progress=progress,
                                device_decode=device_decode,
                                feature_cache=FeatureCache(feature_cache, backbone) if feature_cache else None)
    failures = result.failures.rename(columns={"image_id": "item_id"})
    if cache is not None:  # the predictions file lands last: it marks the cache complete
        write_atomic(failures_cache, lambda p: failures.to_parquet(p, index=False))
        write_atomic(cache, lambda p: pq.write_table(result.predictions, p))
    return ClassificationResult(result.predictions, failures, info)
