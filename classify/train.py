"""Train a CLIP-MHAdapter head for one attribute (methods §2.4), resumably.

Two modes share one loop (``fit``):

* ``augment`` (the reference): every epoch decodes the training images again with
  RandomResizedCrop(224, scale (0.08, 1), bicubic) + horizontal flip and runs the frozen
  backbone on them (no autograd graph through it).
* ``cached`` (fast): the backbone runs once per image with the test transform; its outputs
  (``classify.features``) are reused every epoch. Much faster, but **no image augmentation**,
  so it overfits sooner on small label sets.

Validation always uses the test transform and cached features. AdamW (lr 5e-4, wd 5e-4),
linear warmup for 5 epochs from 1e-5, then cosine to 0 (MHA-P10); checkpoint selection and
early stopping on validation macro-F1 (MHA-P9), ties broken by lower validation loss. Each
epoch is seeded from ``seed + epoch``, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

from contracts.errors import CityAuditError
from classify.backbone import Backbone, ImageFeatures
from classify.checkpoints import CheckpointError, load_train_state, save_head, save_train_state
from classify.features import FeatureCache, encode_files
from classify.labels import LabeledImages, deduplicate, read_labels, stratified_split
from classify.metrics import classification_metrics
from classify.mhadapter import AdapterConfig, MHAdapterHead, build_mhadapter_head
from classify.schema import ATTRIBUTES, get_attribute

#: Per-attribute head settings of the reference comparison (methods §2.2 table). Its class
#: weightings are all "inverse" or "uniform", which are the same thing (MHA-P6).
REFERENCE_ADAPTERS: dict[str, AdapterConfig] = {
    "glare": AdapterConfig(heads=4, blend=0.8),
    "lighting_condition": AdapterConfig(heads=8, blend=0.8),
    "pano_status": AdapterConfig(heads=4, blend=0.2),
    "platform": AdapterConfig(heads=4, blend=0.8),
    "quality": AdapterConfig(heads=16, blend=0.2),
    "reflection": AdapterConfig(heads=8, blend=0.8),
    "view_direction": AdapterConfig(heads=4, blend=0.8),
    "weather": AdapterConfig(heads=8, blend=0.2),
}
assert set(REFERENCE_ADAPTERS) == set(ATTRIBUTES)


class TrainingError(CityAuditError, ValueError):
    """Training cannot start or continue: too few labels, a bad option, a mismatching resume state."""


def _inverse_weights(counts: list[int]) -> torch.Tensor:
    counts_t = torch.tensor(counts, dtype=torch.float32)
    weights = torch.where(counts_t > 0, 1.0 / counts_t.clamp(min=1), torch.zeros_like(counts_t))
    return weights / weights.sum()


#: class weighting name -> training class counts -> CE weights (None = unweighted)
CLASS_WEIGHTINGS: dict[str, Callable[[list[int]], torch.Tensor | None]] = {
    "none": lambda counts: None,
    "inverse": _inverse_weights,
}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (reference values by default)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    warmup_min_lr: float = 1e-5
    patience: int = 10
    class_weighting: str = "inverse"
    val_fraction: float = 0.2
    seed: int = 42
    mode: str = "augment"  # augment | cached
    crop_scale: tuple[float, float] = (0.08, 1.0)
    num_workers: int | None = None

    def __post_init__(self):
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise TrainingError(f"unknown class weighting {self.class_weighting!r}; choose from {list(CLASS_WEIGHTINGS)}")
        if self.mode not in ("augment", "cached"):
            raise TrainingError(f"unknown mode {self.mode!r}; choose augment or cached")
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainingError("epochs and batch_size must be at least 1")

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def learning_rate(epoch: int, config: TrainConfig) -> float:
    """LR of 0-based ``epoch``: linear warmup from ``warmup_min_lr`` to ``lr``, then cosine to 0."""
    if epoch < config.warmup_epochs:
        return config.warmup_min_lr + (config.lr - config.warmup_min_lr) * epoch / config.warmup_epochs
    span = max(1, config.epochs - config.warmup_epochs)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))


def train_transform(backbone: Backbone, scale: tuple[float, float] = (0.08, 1.0)):
    """The reference augmentation: RandomResizedCrop (bicubic) + flip + CLIP normalisation."""
    cfg = backbone.model.visual.preprocess_cfg
    return transforms.Compose([
        transforms.RandomResizedCrop(backbone.image_size, scale=tuple(scale),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])


class _AugmentedImages(Dataset):
    def __init__(self, data: LabeledImages, transform):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.data.files[index]) as im:
                return self.transform(im.convert("RGB")), self.data.labels[index]
        except OSError as exc:
            raise ValueError(f"cannot decode training image {self.data.files[index]!r}: {exc}") from exc


Batches = Callable[[int], Iterator[tuple[ImageFeatures, torch.Tensor]]]


def cached_batches(features: ImageFeatures, labels: torch.Tensor, batch_size: int, seed: int,
                   device: torch.device) -> Batches:
    """Epoch -> shuffled mini-batches over precomputed features (order seeded by ``seed + epoch``)."""
    def batches(epoch: int):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield ImageFeatures(features.pooled[index], features.patch_tokens[index]).to(device), labels[index].to(device)
    return batches


def augmented_batches(data: LabeledImages, backbone: Backbone, config: TrainConfig) -> Batches:
    """Epoch -> mini-batches of freshly augmented images pushed through the frozen backbone."""
    dataset = _AugmentedImages(data, train_transform(backbone, config.crop_scale))
    workers = config.num_workers if config.num_workers is not None else min(8, max(0, len(data) // 64))

    def batches(epoch: int):
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(config.seed + epoch),
                            pin_memory=backbone.device.type == "cuda")
        for pixels, labels in loader:
            features = backbone.encode_images(pixels)  # inference mode: no graph through the backbone
            yield ImageFeatures(features.pooled.clone(), features.patch_tokens.clone()), labels.to(backbone.device)
    return batches


@torch.no_grad()
def predict_logits(head: nn.Module, features: ImageFeatures, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (n, C) of ``head`` in eval mode over precomputed features, on the CPU."""
    head.eval()
    out = [head(ImageFeatures(features.pooled[i:i + batch_size], features.patch_tokens[i:i + batch_size]).to(device))
           .float().cpu() for i in range(0, features.pooled.shape[0], batch_size)]
    return torch.cat(out)


@dataclass
class FitResult:
    """What ``fit`` returns: the best epoch, its validation metrics and the per-epoch history."""

    best_epoch: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def fit(head: nn.Module, batches: Batches, val_features: ImageFeatures, val_labels: torch.Tensor,
        class_counts: list[int], config: TrainConfig, device: torch.device, *, state_path: Path | None = None,
        resume: bool = False, progress: bool = True, desc: str = "training") -> FitResult:
    """Train ``head.trainable_parameters()`` and leave ``head`` holding its best-validation weights.

    ``batches(epoch)`` yields (features, labels). With ``state_path`` the state after each epoch
    is saved there; ``resume`` continues from it (refused if the config differs).
    """
    optimizer = torch.optim.AdamW(head.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.999))
    weights = CLASS_WEIGHTINGS[config.class_weighting](class_counts)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    classes = head.attribute.classes
    start, history, best, best_state, stale = 0, [], None, None, 0
    if resume and state_path is not None and state_path.is_file():
        done, progress_state, extra = load_train_state(state_path, head, optimizer)
        if progress_state.get("config") != config.to_dict():
            raise TrainingError(f"{state_path}: saved with other hyperparameters {progress_state.get('config')}; "
                                f"start without --resume or use the same options")
        start, history, stale = done + 1, progress_state["history"], progress_state["stale"]
        best = (progress_state["best_key"], progress_state["best"])
        best_state = {k: v.to(device) for k, v in extra.items()}
    epochs = tqdm(range(start, config.epochs), desc=desc, unit="epoch", disable=not progress,
                  initial=start, total=config.epochs)
    for epoch in epochs:
        if stale >= config.patience:
            break
        torch.manual_seed(config.seed + epoch)  # dropout (and single-process augmentation) per epoch
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(epoch, config)
        head.train()
        total, correct, loss_sum = 0, 0, 0.0
        for features, labels in batches(epoch):
            logits = head(features)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        val_logits = predict_logits(head, val_features, config.batch_size, device)
        val_loss = float(nn.functional.cross_entropy(val_logits, val_labels, weight=None if weights is None else weights))
        metrics = classification_metrics(val_labels.numpy(), val_logits.argmax(-1).numpy(), classes)
        row = {"epoch": epoch, "lr": learning_rate(epoch, config), "train_loss": loss_sum / max(total, 1),
               "train_accuracy": correct / max(total, 1), "val_loss": val_loss,
               "val_macro_f1": metrics["macro_f1"], "val_accuracy": metrics["accuracy"]}
        history.append(row)
        key = [metrics["macro_f1"], -val_loss]
        if best is None or key > best[0]:
            best, stale = (key, {**metrics, "epoch": epoch, "val_loss": val_loss}), 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
        epochs.set_postfix(loss=f"{row['train_loss']:.3f}", val_f1=f"{metrics['macro_f1']:.3f}")
        if state_path is not None:
            save_train_state(state_path, head, optimizer, epoch=epoch, extra_tensors=best_state, progress={
                "config": config.to_dict(), "history": history, "stale": stale, "best_key": best[0], "best": best[1]})
    if best is None:
        raise TrainingError("no epoch was trained")
    head.load_state_dict(best_state)
    head.eval()
    return FitResult(best_epoch=best[1]["epoch"], best_metrics=best[1], history=history,
                     stopped_early=stale >= config.patience and len(history) < config.epochs)


@dataclass
class TrainResult:
    """A trained head, where it was saved, and how training went."""

    head: MHAdapterHead
    checkpoint: Path
    fit: FitResult
    n_train: int
    n_val: int


def split_labels(data: LabeledImages, config: TrainConfig) -> tuple[LabeledImages, LabeledImages]:
    """The seeded stratified (train, val) split of ``data``; ``TrainingError`` without any val image."""
    train_idx, val_idx = stratified_split(data.labels, config.val_fraction, config.seed)
    if not val_idx:
        raise TrainingError(f"{data.source}: every class has a single image; a validation split needs at least "
                            f"two images of some class")
    return data.subset(train_idx), data.subset(val_idx)


def train_attribute(attribute: str, data: str | Path, backbone: Backbone, out_dir: str | Path, *,
                    config: TrainConfig = TrainConfig(), adapter: AdapterConfig | None = None,
                    resume: bool = False, cache_dir: str | Path | None = None,
                    progress: bool = True) -> TrainResult:
    """Train ``attribute``'s head on the labels in ``data`` (GSS folder or ``path,label`` CSV).

    Writes ``<out_dir>/<attribute>.safetensors`` + ``.json`` (the best-validation head) and the
    resumable state under ``<out_dir>/.train/``. ``adapter`` defaults to the reference settings
    of the attribute; ``cache_dir`` keeps backbone outputs for reuse (``FeatureCache``).
    """
    attr = get_attribute(attribute)
    adapter = adapter or REFERENCE_ADAPTERS[attr.name]
    labeled, duplicates = deduplicate(read_labels(data, attr, "train"))  # a repeated row must not land in train and val
    train, val = split_labels(labeled, config)
    missing = [c for c, n in zip(attr.classes, train.class_counts()) if n == 0]
    if missing:
        warnings.warn(f"{attr.name}: no training image of class(es) {', '.join(missing)}; the head cannot learn them",
                      stacklevel=2)
    cache = FeatureCache(cache_dir, backbone) if cache_dir is not None else None

    def encode(part: LabeledImages) -> ImageFeatures:
        return encode_files(list(part.files), list(part.image_ids), backbone, cache=cache,
                            batch_size=config.batch_size, num_workers=config.num_workers, progress=progress)

    val_features = encode(val)
    if config.mode == "cached":
        batches = cached_batches(encode(train), torch.tensor(train.labels), config.batch_size, config.seed,
                                 backbone.device)
    else:
        batches = augmented_batches(train, backbone, config)
    torch.manual_seed(config.seed)
    head = build_mhadapter_head(backbone, attr, adapter)
    out_dir = Path(out_dir)
    try:
        result = fit(head, batches, val_features, torch.tensor(val.labels), train.class_counts(), config,
                     backbone.device, state_path=out_dir / ".train" / f"{attr.name}.safetensors", resume=resume,
                     progress=progress, desc=f"training {attr.name}")
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    hyperparameters = {**config.to_dict(), "data": str(data), "n_train": len(train), "n_val": len(val),
                       "duplicates_dropped": duplicates, "classes_without_training_images": missing,
                       "train_class_counts": train.class_counts(), "val_class_counts": val.class_counts()}
    metrics = {"val": result.best_metrics, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
               "history": result.history}
    checkpoint = save_head(head, out_dir, backbone, hyperparameters=hyperparameters, metrics=metrics)
    return TrainResult(head, checkpoint, result, len(train), len(val))


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    """``config`` with every non-None override applied (for CLI/flow parameters)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
