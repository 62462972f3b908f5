"""Batched inference: decode images, run the backbone once per batch, apply every head.

``predict_attributes`` takes a table of images (``image_id`` and an absolute ``file``) and
returns predictions in the long ``predictions`` contract plus a failures table for images that
could not be decoded. Decoding runs in DataLoader worker processes; CUDA gets pinned memory and
bf16 autocast, the CPU stays in fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import pandas as pd
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from classify.backbone import Backbone
from classify.heads import Head

PREDICTION_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("attribute", pa.string()),
        ("label", pa.string()),
        ("confidence", pa.float32()),
        ("probabilities", pa.map_(pa.string(), pa.float32())),
        ("method", pa.string()),
        ("model_id", pa.string()),
    ]
)


class _ImageFiles(Dataset):
    """Decodes and preprocesses images; a file that fails to decode yields its error message."""

    def __init__(self, files: list[str], preprocess):
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.files[index]) as im:
                pixels = self.preprocess(im.convert("RGB"))
            return index, pixels, None
        except Exception as exc:  # noqa: BLE001 - any decode failure is recorded, not raised
            return index, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    good = [(i, px) for i, px, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    indices = [i for i, _ in good]
    pixels = torch.stack([px for _, px in good]) if good else None
    return indices, pixels, bad


@dataclass
class PredictionResult:
    predictions: pa.Table  # PREDICTION_SCHEMA
    failures: pd.DataFrame  # image_id, stage, reason


def default_num_workers(n_images: int) -> int:
    """Worker processes for decoding: none for a handful of images, else up to 8."""
    if n_images < 64:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def predict_attributes(images: pd.DataFrame, backbone: Backbone, heads: Mapping[str, Head], *,
                       batch_size: int = 32, num_workers: int | None = None,
                       progress: bool = True) -> PredictionResult:
    """Classify every image for every head.

    ``images`` needs columns ``image_id`` and ``file`` (a readable path). Returns one prediction
    row per (image, attribute) with the label, its probability as ``confidence``, all class
    probabilities and the head's method; undecodable images go to ``failures``.
    """
    files = images["file"].astype(str).tolist()
    ids = images["image_id"].astype(str).tolist()
    workers = default_num_workers(len(files)) if num_workers is None else num_workers
    loader = DataLoader(
        _ImageFiles(files, backbone.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=backbone.device.type == "cuda",
        # Workers start from a clean forkserver: forking a process that runs Prefect's server and
        # logging threads (as a flow task does) can kill a worker at start-up.
        multiprocessing_context="forkserver" if workers else None,
    )
    columns: dict[str, list] = {name: [] for name in PREDICTION_SCHEMA.names}
    failures = []
    model_ids = {name: f"{backbone.model_id}+{head.head_id}" for name, head in heads.items()}
    with tqdm(total=len(files), desc="classifying images", unit="img", disable=not progress) as bar:
        for indices, pixels, bad in loader:
            failures += [(ids[i], "classify", reason) for i, reason in bad]
            if pixels is not None:
                features = backbone.encode_images(pixels)
                for name, head in heads.items():
                    with torch.inference_mode():
                        probs = head(features).float().softmax(dim=-1).cpu()
                    confidence, best = probs.max(dim=-1)
                    classes = head.attribute.classes
                    for row, index in enumerate(indices):
                        columns["image_id"].append(ids[index])
                        columns["attribute"].append(name)
                        columns["label"].append(classes[int(best[row])])
                        columns["confidence"].append(float(confidence[row]))
                        columns["probabilities"].append(list(zip(classes, probs[row].tolist())))
                        columns["method"].append(head.method)
                        columns["model_id"].append(model_ids[name])
            bar.update(len(indices) + len(bad))
    table = pa.Table.from_pydict(columns, schema=PREDICTION_SCHEMA)
    return PredictionResult(table, pd.DataFrame(failures, columns=["image_id", "stage", "reason"]))
