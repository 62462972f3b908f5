"""Unsupervised adaptation to a city's own unlabelled images: one engine, a registry of methods.

``adapt_attribute("microclip" | "fair", attribute, files, backbone, out_dir)`` builds the
method's model, self-trains it on weak/strong/crop views of ``files`` (``classify.views``) and
writes ``<out_dir>/<attribute>.safetensors`` + ``.json`` through ``classify.checkpoints`` (the
same format as MHAdapter heads, so ``--heads DIR`` serves them).

Loop (methods §3.4, shared by both methods): AdamW (lr 1e-4, weight decay 0.1 on every
trainable: the reference's effective setting, MC-P14; ``decay_norms=False`` exempts LayerNorms
and heads), lr set per iteration by a cosine from ``lr`` to ``min_lr`` (2e-6) without warmup,
the last model is kept. Time is bounded by ``epochs`` and optionally ``max_steps``. On CUDA the
forward passes run under bf16 autocast with fp32 master weights and gradient-norm clipping at
1.0; the CPU runs fp32. Each epoch reseeds torch, Python and the loader from ``seed + epoch``,
so a run is reproducible. Unlike the reference there is no anomaly detection, no higher-order
graph and no per-step synchronize/empty_cache (MC-P4-P6). No feature cache: the LayerNorms train, so every view needs a fresh
forward and a backward through the whole image tower (cost: ``docs/adaptation.md``).
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from classify.adapted_visual import AdaptationError
from classify.backbone import Backbone
from classify.checkpoints import save_head
from classify.fair import FairConfig, build_fair_head, fair_loss
from classify.labels import IMAGE_SUFFIXES
from classify.registry import HEAD_METHODS, adaptation_methods
from classify.microclip import MicroCLIPConfig, RunningMean, build_microclip_head, microclip_loss
from classify.schema import ATTRIBUTES, get_attribute
from classify.views import SelfTrainingViews, strong_mode_for
from contracts.results import image_file


@dataclass(frozen=True)
class AdaptMethod:
    """How an unsupervised head method adapts: its config class, head builder and loss."""

    name: str
    display_name: str
    config: type
    build: Callable  # (backbone, attribute, config) -> head
    loss: Callable  # (head, weak, strong, crops, RunningMean) -> (loss, stats)


_ADAPTATION_PARTS = {  # method -> (config, build, loss); names and display names live in HEAD_METHODS
    "microclip": (MicroCLIPConfig, build_microclip_head, microclip_loss),
    "fair": (FairConfig, build_fair_head, fair_loss),
}


def adaptation_method(name: str) -> AdaptMethod:
    """The adaptation of registered head method ``name`` (``classify.registry.HEAD_METHODS``)."""
    config, build, loss = _ADAPTATION_PARTS[name]
    return AdaptMethod(name, HEAD_METHODS.get(name).display_name, config, build, loss)


#: The unsupervised methods by name, as registered in ``classify.registry.HEAD_METHODS``.
METHODS: dict[str, AdaptMethod] = {name: adaptation_method(name) for name in adaptation_methods()}


def get_method(name: str) -> AdaptMethod:
    """Look a method up by name, with ``AdaptationError`` listing the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise AdaptationError(f"unknown adaptation method {name!r}; choose from {', '.join(METHODS)}") from None


_PARSERS = {"float": float, "int": int, "str": str, "bool": lambda v: v.lower() in ("1", "true", "yes")}


def method_config(method: str, options: list[str] | dict | None = None):
    """The method's config with ``options`` applied: ``["gamma=0.3", "weighting=margin"]`` or a dict.

    Values are converted by the field's type; ``AdaptationError`` names an unknown key or bad value.
    """
    from dataclasses import fields

    spec = get_method(method)
    known = {f.name: f for f in fields(spec.config)}
    pairs = options.items() if isinstance(options, dict) else [o.split("=", 1) if "=" in o else (o, None)
                                                                 for o in (options or [])]
    values = {}
    for key, value in pairs:
        if key not in known:
            raise AdaptationError(f"unknown {method} option {key!r}; choose from {', '.join(known)}")
        if value is None:
            raise AdaptationError(f"option {key!r} needs a value: {key}=VALUE")
        try:
            values[key] = _PARSERS[str(known[key].type)](value) if isinstance(value, str) else value
        except ValueError:
            raise AdaptationError(f"{method} option {key}={value!r} is not a valid {known[key].type}") from None
    return spec.config(**values)


@dataclass(frozen=True)
class AdaptConfig:
    """Self-training loop settings (the microCLIP reference values by default)."""

    epochs: int = 15
    max_steps: int | None = None  # stop after this many optimizer steps (bounded time)
    batch_size: int = 64
    lr: float = 1e-4
    min_lr: float = 2e-6
    weight_decay: float = 0.1
    decay_norms: bool = True  # parity: decay LayerNorms and heads too (MC-P14)
    n_crops: int = 8
    crop_scale: tuple[float, float] = (0.5, 0.9)
    strong: str = "auto"  # auto | randaugment | geometric (MC-P20)
    seed: int = 0
    num_workers: int | None = None
    grad_clip: float = 1.0  # applied under AMP (CUDA), as the reference does

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.n_crops < 1:
            raise AdaptationError("epochs, batch_size and n_crops must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise AdaptationError("max_steps must be at least 1")
        strong_mode_for("weather", self.strong)  # validates the name

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def cosine_lr(step: int, total: int, config: AdaptConfig) -> float:
    """Per-iteration cosine from ``lr`` (step 0) to ``min_lr`` (step ``total``), no warmup."""
    progress = min(1.0, step / max(1, total))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(head: nn.Module, config: AdaptConfig) -> list[dict]:
    """AdamW groups: everything decayed (parity) or LayerNorms/heads exempt (``decay_norms=False``)."""
    params = head.trainable_parameters()
    if config.decay_norms:
        return [{"params": params, "weight_decay": config.weight_decay}]
    soap = getattr(head, "soap", None)
    projections = [layer.weight for layer in (soap.q_proj, soap.k_proj, soap.v_proj)] if soap is not None else []
    decayed = {id(p) for p in projections}
    groups = [{"params": projections, "weight_decay": config.weight_decay},
              {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def self_train(head: nn.Module, method: AdaptMethod, files: list[str], backbone: Backbone, config: AdaptConfig,
               *, progress: bool = True) -> list[dict]:
    """Self-train ``head`` in place on ``files``; returns one history row per epoch (losses, pseudo-label counts)."""
    if not files:
        raise AdaptationError("no images to adapt on")
    dataset = SelfTrainingViews(files, backbone, n_crops=config.n_crops, crop_scale=config.crop_scale,
                                strong=strong_mode_for(head.attribute.name, config.strong))
    workers = config.num_workers if config.num_workers is not None else min(8, len(files) // 64)
    per_epoch = math.ceil(len(files) / config.batch_size)
    total = min(config.epochs * per_epoch, config.max_steps or config.epochs * per_epoch)
    groups = parameter_groups(head, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    cuda = backbone.device.type == "cuda"
    running, history, step = RunningMean(), [], 0
    bar = tqdm(total=total, desc=f"adapting {head.attribute.name} ({method.name})", unit="step", disable=not progress)
    for epoch in range(config.epochs):
        if step >= total:
            break
        _seed_everything(config.seed + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(config.seed + epoch), pin_memory=cuda)
        head.train()
        running.reset()
        sums = {"loss": 0.0, "ce": 0.0, "fairness": 0.0}
        counts = torch.zeros(len(head.attribute.classes), dtype=torch.long)
        batches = 0
        for weak, strong, crops in loader:
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, config)
            weak, strong, crops = (t.to(backbone.device, non_blocking=True) for t in (weak, strong, crops))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss, stats = method.loss(head, weak, strong, crops, running)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cuda and config.grad_clip:
                nn.utils.clip_grad_norm_(head.trainable_parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            batches += 1
            sums["loss"] += float(loss.detach())
            sums["ce"] += stats["ce"]
            sums["fairness"] += stats["fairness"]
            counts += torch.bincount(stats["pseudo_labels"], minlength=len(counts))
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        history.append({"epoch": epoch, "steps": step, **{k: v / max(1, batches) for k, v in sums.items()},
                        "pseudo_label_counts": dict(zip(head.attribute.classes, counts.tolist()))})
    bar.close()
    head.eval()
    return history


def image_files(images: str | Path) -> list[str]:
    """Image files of a finished run's output folder (``images.parquet`` + ``images/``) or of a plain folder.

    Paths in ``images.parquet`` resolve against the folder, then against ``images/``; a plain
    folder is searched recursively for .jpg/.jpeg/.png. ``AdaptationError`` if none exist.
    """
    folder = Path(images)
    if not folder.is_dir():
        raise AdaptationError(f"{str(folder)!r} is not a folder; pass a run's output folder or a folder of images")
    table = folder / "images.parquet"
    if table.is_file():
        files = []
        for path in pd.read_parquet(table, columns=["path"])["path"].astype(str):
            candidates = [folder / path, folder / "images" / path]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise AdaptationError(f"{table}: image {path!r} is missing (looked in {folder} and {folder / 'images'})")
            files.append(str(found))
    else:
        files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AdaptationError(f"no images found in {folder}")
    return files


@torch.no_grad()
def zero_shot_label_prior(head: nn.Module, files: list[str], backbone: Backbone, *, batch_size: int = 64,
                          progress: bool = True) -> torch.Tensor:
    """π (C,) for the prior-matched fairness term (MC-P19): add-one-smoothed frequencies of the
    initial model's CLS-vs-prior predictions over ``files`` (test transform)."""
    from classify.predict import image_batches

    counts = torch.ones(len(head.attribute.classes))
    for _, pixels, _ in image_batches(files, backbone, batch_size=batch_size, progress=progress,
                                      desc="estimating the label prior"):
        if pixels is not None:
            pooled, _ = head.visual(pixels.to(backbone.device), with_tokens=False)
            scores = nn.functional.normalize(pooled.float(), dim=-1) @ head.prior.T
            counts += torch.bincount(scores.argmax(-1).cpu(), minlength=len(counts))
    return (counts / counts.sum()).to(head.label_prior.device)


@dataclass
class AdaptResult:
    """An adapted head, where it was saved, and how self-training went."""

    head: nn.Module
    checkpoint: Path
    history: list[dict]
    n_images: int
    reused: bool = False  # True when an identical earlier adaptation was loaded instead of retrained


def images_digest(files: list[str]) -> str:
    """sha256 over the sorted paths, sizes and modification times of ``files`` (what a reuse check compares)."""
    import hashlib
    import os

    digest = hashlib.sha256()
    for file in sorted(files):
        stat = os.stat(file)
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _reusable(sidecar_path: Path, method: str, hyperparameters: dict, method_config, backbone: Backbone):
    """The saved head if ``sidecar_path`` was adapted with the same method, settings, images and backbone."""
    from classify.checkpoints import CheckpointError, load_head, read_sidecar

    if not sidecar_path.is_file():
        return None
    try:
        sidecar = read_sidecar(sidecar_path)
        same = sidecar.get("method") == method and sidecar.get("adapter") == method_config.to_dict() and \
            all(sidecar.get("hyperparameters", {}).get(k) == v for k, v in hyperparameters.items())
        return load_head(sidecar_path, backbone) if same else None
    except CheckpointError:
        return None


def adapt_attribute(method: str, attribute: str, files: list[str], backbone: Backbone, out_dir: str | Path, *,
                    config: AdaptConfig = AdaptConfig(), method_config=None, reuse: bool = True,
                    progress: bool = True) -> AdaptResult:
    """Adapt ``attribute`` with ``method`` on unlabelled ``files`` and save the checkpoint in ``out_dir``.

    With ``reuse``, an existing checkpoint adapted with the same method, settings, images (paths,
    sizes, mtimes) and backbone is loaded instead of training again (``AdaptResult.reused``).
    """
    from classify.checkpoints import head_paths, read_sidecar

    spec = get_method(method)
    attr = get_attribute(attribute)
    method_config = method_config or spec.config()
    hyperparameters = {**config.to_dict(), "method_name": spec.display_name, "n_images": len(files),
                       "images_sha256": images_digest(list(files)),
                       "strong_resolved": strong_mode_for(attr.name, config.strong), "unsupervised": True}
    sidecar_path = head_paths(out_dir, attr.name)[1]
    saved = _reusable(sidecar_path, method, hyperparameters, method_config, backbone) if reuse else None
    if saved is not None:
        history = read_sidecar(sidecar_path).get("metrics", {}).get("history", [])
        return AdaptResult(saved, sidecar_path, history, len(files), reused=True)
    _seed_everything(config.seed)
    head = spec.build(backbone, attr, method_config)
    if getattr(method_config, "fairness", "uniform") == "prior":
        head.label_prior.copy_(zero_shot_label_prior(head, list(files), backbone, progress=progress))
    history = self_train(head, spec, list(files), backbone, config, progress=progress)
    checkpoint = save_head(head, out_dir, backbone, hyperparameters=hyperparameters, metrics={"history": history})
    return AdaptResult(head, checkpoint, history, len(files))


def adapt_images(method: str, files: list[str], attributes: list[str], backbone: Backbone, out_dir: str | Path, *,
                 config: AdaptConfig = AdaptConfig(), method_config=None, reuse: bool = True,
                 progress: bool = True) -> dict[str, AdaptResult]:
    """Adapt every attribute in ``attributes`` on the same unlabelled ``files``; checkpoints go to ``out_dir``
    (an identical earlier adaptation there is reused, see ``adapt_attribute``)."""
    if not attributes:
        raise AdaptationError("no attributes to adapt")
    return {name: adapt_attribute(method, name, files, backbone, out_dir, config=config,
                                  method_config=method_config, reuse=reuse, progress=progress) for name in attributes}


def adapt_image_store(images: pd.DataFrame, store: str | Path, method: str, attributes: list[str], out_dir: str | Path,
                      *, backbone: Backbone, options: dict | None = None, trained_heads: str | Path | None = None,
                      progress: bool = True) -> dict:
    """A run's adaptation stage: adapt ``attributes`` on the images of a run's store (``path`` relative
    to ``store``) on the run's ``backbone``. ``options`` override ``AdaptConfig`` fields. Checkpoints in
    ``trained_heads`` for the other attributes are copied beside the adapted ones, so ``out_dir`` is
    the run's whole head bundle. Returns a JSON-able summary."""
    from dataclasses import replace

    config = replace(AdaptConfig(), **{k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()})
    files = [str(image_file(store, p)) for p in images["path"]]
    results = adapt_images(method, files, attributes, backbone, out_dir, config=config, progress=progress)
    for name in ATTRIBUTES:
        if name in attributes or trained_heads is None:
            continue
        for suffix in (".json", ".safetensors"):
            trained = Path(trained_heads) / f"{name}{suffix}"
            if trained.is_file():
                shutil.copy2(trained, Path(out_dir) / trained.name)
    return {"method": method, "method_name": get_method(method).display_name, "heads": str(out_dir),
            "n_images": len(files), "backbone_trained": backbone.trained, "config": config.to_dict(),
            "checkpoints": {name: str(r.checkpoint) for name, r in results.items()},
            "reused": sorted(name for name, r in results.items() if r.reused)}
