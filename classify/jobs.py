"""The ``train``, ``adapt`` and ``gss`` jobs, each one function that the command line (and a flow) calls.

``train_head`` loads the backbone and trains one attribute's CLIP-MHAdapter head;
``adapt_heads`` loads the backbone and adapts heads to a folder of unlabelled images, and
optionally compares them with zero-shot on a labelled set; ``gss_heads`` trains and evaluates the
heads of several attributes on one Global StreetScapes folder with one backbone. Options left None keep the
reference values (``classify.train.TrainConfig``, ``classify.adapt.AdaptConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from classify.backbone import load_backbone
from classify.schema import ATTRIBUTES


@dataclass
class TrainJob:
    """What ``train_head`` did: the backbone it trained on and the training result."""

    backbone: Any  # classify.backbone.Backbone
    result: Any  # classify.train.TrainResult
    mode: str


def train_head(attribute: str, data: str | Path, out: str | Path, *, model: str = "vit-b16",
               weights: str | None = None, device: str | None = None, mode: str | None = None,
               epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               weight_decay: float | None = None, patience: int | None = None, class_weighting: str | None = None,
               attention_heads: int | None = None, blend: float | None = None, seed: int | None = None,
               num_workers: int | None = None, resume: bool = False, cache_dir: str | None = None,
               progress: bool = True) -> TrainJob:
    """Train ``attribute``'s head on ``data`` (GSS folder or ``path,label`` CSV) into ``out``.

    ``attention_heads`` and ``blend`` default to the attribute's reference adapter settings.
    """
    from classify.mhadapter import AdapterConfig
    from classify.train import REFERENCE_ADAPTERS, TrainConfig, train_attribute, with_overrides

    config = with_overrides(TrainConfig(), mode=mode, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, patience=patience, class_weighting=class_weighting,
                            seed=seed, num_workers=num_workers)
    reference = REFERENCE_ADAPTERS[attribute]
    adapter = AdapterConfig(heads=attention_heads or reference.heads, blend=blend or reference.blend)
    backbone = load_backbone(model, weights=weights, device=device)
    result = train_attribute(attribute, data, backbone, out, config=config, adapter=adapter, resume=resume,
                             cache_dir=cache_dir, progress=progress)
    return TrainJob(backbone, result, config.mode)


@dataclass
class AdaptJob:
    """What ``adapt_heads`` did: the method's name, the results per attribute and the comparison reports."""

    method_name: str
    n_images: int
    backbone: Any  # classify.backbone.Backbone
    results: dict  # attribute -> classify.adapt.AdaptResult
    reports: list[dict]


def adapt_heads(method: str, images: str | Path, attributes: list[str] | None, out: str | Path, *,
                model: str = "vit-b16", weights: str | None = None, device: str | None = None,
                options: dict[str, Any] | None = None, method_options: list[str] | dict | None = None,
                eval_data: str | None = None, eval_split: str = "test", progress: bool = True,
                on_start=None) -> AdaptJob:
    """Adapt ``attributes`` (default all 8) with ``method`` on ``images`` (a run's output folder or a folder of
    images) into the heads folder ``out``; with ``eval_data``, compare each with zero-shot on that labelled set.

    ``options`` override ``AdaptConfig`` fields, ``method_options`` the method's config
    (``["gamma=0.3"]`` or a dict); ``on_start(method_name, n_images)`` is called before training.
    """
    from classify.adapt import AdaptConfig, adapt_images, get_method, image_files, method_config
    from classify.adapt_eval import compare_adapted

    attributes = list(attributes or ATTRIBUTES)
    spec = get_method(method)
    config = replace(AdaptConfig(), **(options or {}))
    settings = method_config(method, method_options)
    files = image_files(images)
    backbone = load_backbone(model, weights=weights, device=device)
    if on_start:
        on_start(spec.display_name, len(files))
    results = adapt_images(method, files, attributes, backbone, out, config=config, method_config=settings,
                           progress=progress)
    reports = [compare_adapted(name, eval_data, backbone, out, out, split=eval_split, progress=progress)
               for name in attributes] if eval_data else []
    return AdaptJob(spec.display_name, len(files), backbone, results, reports)


@dataclass
class GssJob:
    """What ``gss_heads`` did: the backbone, per attribute the training result and the test-split evaluation report."""

    backbone: Any  # classify.backbone.Backbone
    trained: dict  # attribute -> classify.train.TrainResult
    reports: dict  # attribute -> classify.evaluate.evaluate_attribute report
    encode_seconds: float  # wall time spent in backbone passes (0 when every feature came from the cache)
    images_encoded: int  # images that went through the backbone in this call


def gss_heads(attributes: list[str], data: str | Path, heads_dir: str | Path, eval_dir: str | Path, *,
              model: str = "vit-b16", weights: str | None = None, device: str | None = None,
              cache_dir: str | Path, mode: str = "cached", epochs: int | None = None,
              batch_size: int | None = None, seed: int | None = None, num_workers: int | None = None,
              baseline_config=None, drop_train_overlap: bool = False, progress: bool = True) -> GssJob:
    """Train the MHAdapter head of every attribute in ``attributes`` on ``data``'s train split (a Global
    StreetScapes folder) and evaluate each, with ZeroR, zero-shot and the §2.8 baselines, on its test split.

    One backbone, loaded once; every image goes through it once (``cache_dir`` holds its outputs by
    content hash, so an image labelled for several attributes, a rerun and the evaluation reuse
    them). Training resumes from its per-epoch state (``heads_dir/.train``), so a killed run loses
    at most one epoch. Reference adapter settings per attribute; ``mode`` ``cached`` (default: one
    pass per image, no augmentation) or ``augment`` (the reference: a backbone pass per image and epoch).
    """
    import time

    from classify.baselines import BaselineConfig
    from classify.evaluate import evaluate_attribute
    from classify.train import REFERENCE_ADAPTERS, TrainConfig, train_attribute, with_overrides

    config = with_overrides(TrainConfig(), mode=mode, epochs=epochs, batch_size=batch_size, seed=seed,
                            num_workers=num_workers)
    backbone = load_backbone(model, weights=weights, device=device)
    spent = {"seconds": 0.0, "images": 0}
    original = backbone.encode_images

    def timed(pixels):  # measured per-image backbone cost, for the cost table
        start = time.perf_counter()
        out = original(pixels)
        if backbone.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        spent["seconds"] += time.perf_counter() - start
        spent["images"] += int(pixels.shape[0])
        return out

    backbone.encode_images = timed
    trained, reports = {}, {}
    try:
        for name in attributes:
            trained[name] = train_attribute(name, data, backbone, heads_dir, config=config,
                                            adapter=REFERENCE_ADAPTERS[name], resume=True, cache_dir=cache_dir,
                                            progress=progress)
            reports[name] = evaluate_attribute(name, data, backbone, eval_dir, heads_dir=heads_dir, split="test",
                                               cache_dir=cache_dir, progress=progress,
                                               drop_train_overlap=drop_train_overlap,
                                               baseline_config=baseline_config or BaselineConfig())
    finally:
        backbone.encode_images = original
    return GssJob(backbone, trained, reports, spent["seconds"], spent["images"])
