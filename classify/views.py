"""Training views for self-training (methods §3.4): weak, strong and K random crops per image.

* weak: Resize(S, bicubic) → RandomCrop(S) → ToTensor → CLIP normalisation;
* strong: timm's RandomResizedCrop(scale 0.3-1) + HFlip + RandAugment(rand-m9-mstd0.5-inc1), no
  colour jitter (the reference), or geometric only (RandomResizedCrop + HFlip): photometric
  RandAugment changes exactly the evidence for weather, lighting, glare, reflection and quality
  (pitfall MC-P20), so ``strong="auto"`` uses the geometric view for those attributes (our
  deviation, recorded in the checkpoint);
* K crops: squares of side U(α, β)·min(H, W) at random positions of the **original** image, each
  through the weak transform (WCA's localized visual prompting).

Images are decoded and augmented in DataLoader workers; every view is a different random draw
per epoch, so no backbone output can be cached for training (the LayerNorms change anyway).
"""

from __future__ import annotations

import random

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from classify.adapted_visual import AdaptationError
from classify.backbone import Backbone

PHOTOMETRIC_ATTRIBUTES = frozenset({"weather", "lighting_condition", "glare", "reflection", "quality"})
STRONG_MODES = ("auto", "randaugment", "geometric")


def strong_mode_for(attribute: str, mode: str = "auto") -> str:
    """``randaugment`` or ``geometric``: resolves ``auto`` by whether ``attribute`` is photometric."""
    if mode not in STRONG_MODES:
        raise AdaptationError(f"strong augmentation must be one of {STRONG_MODES}, got {mode!r}")
    if mode == "auto":
        return "geometric" if attribute in PHOTOMETRIC_ATTRIBUTES else "randaugment"
    return mode


def _normalize(backbone: Backbone):
    cfg = backbone.model.visual.preprocess_cfg
    return transforms.Normalize(cfg["mean"], cfg["std"])


def weak_transform(backbone: Backbone):
    """Resize shorter side to S (bicubic), RandomCrop S, ToTensor, Normalize."""
    size = backbone.image_size
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.RandomCrop(size), transforms.ToTensor(), _normalize(backbone)])


def strong_transform(backbone: Backbone, mode: str):
    """The student's view: ``randaugment`` (timm, the reference) or ``geometric`` (crop + flip only)."""
    size = backbone.image_size
    cfg = backbone.model.visual.preprocess_cfg
    if mode == "randaugment":
        from timm.data import create_transform

        return create_transform(input_size=size, is_training=True, scale=(0.3, 1.0), auto_augment="rand-m9-mstd0.5-inc1",
                                interpolation="bicubic", color_jitter=0.0, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.3, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), _normalize(backbone)])


def random_square_crops(image: Image.Image, n: int, scale: tuple[float, float], rng: random.Random) -> list[Image.Image]:
    """``n`` square crops of side U(α, β)·min(W, H) at uniform random positions of ``image``."""
    width, height = image.size
    crops = []
    for _ in range(n):
        side = max(1, int(rng.uniform(*scale) * min(width, height)))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
        crops.append(image.crop((left, top, left + side, top + side)))
    return crops


class SelfTrainingViews(Dataset):
    """Item i -> (weak (3, S, S), strong (3, S, S), crops (K, 3, S, S)) of ``files[i]``."""

    def __init__(self, files: list[str], backbone: Backbone, *, n_crops: int = 8,
                 crop_scale: tuple[float, float] = (0.5, 0.9), strong: str = "randaugment"):
        self.files = list(files)
        self.weak = weak_transform(backbone)
        self.strong = strong_transform(backbone, strong)
        self.n_crops, self.crop_scale = n_crops, tuple(crop_scale)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            with Image.open(self.files[index]) as im:
                image = im.convert("RGB")
        except OSError as exc:
            raise AdaptationError(f"cannot decode image {self.files[index]!r}: {exc}") from exc
        rng = random.Random(torch.randint(0, 2 ** 31, ()).item())  # follows the (seeded) torch RNG
        crops = random_square_crops(image, self.n_crops, self.crop_scale, rng)
        return self.weak(image), self.strong(image), torch.stack([self.weak(c) for c in crops])
