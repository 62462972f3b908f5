"""Backbone outputs on disk, keyed by the image file's content hash and the backbone weights hash.

``FeatureCache(root, backbone)`` keeps one safetensors file per image under
``<root>/<backbone name>-<weights sha256[:16]>/<sha256 of the file's bytes>.safetensors``,
holding that image's pooled embedding (E,) and penultimate-block patch tokens (N, W) in fp32.
Keys are content hashes (``FeatureCache.key(file)``), never file names: two different images
called ``0001.jpg`` in two folders get their own features, and the same image under two names
is encoded once. Heads can then be re-run, and the fast
training mode can train, without the backbone. Another backbone (or other weights) never
sees these files because the hash is part of the folder name.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from classify.backbone import Backbone, ImageFeatures
from contracts.files import write_atomic
from classify.labels import file_digest
from classify.predict import image_batches

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class FeatureCache:
    """Per-image backbone features for one backbone; ``get``/``put`` work on batches."""

    def __init__(self, root: str | os.PathLike, backbone: Backbone):
        self.backbone_key = _UNSAFE.sub("_", f"{backbone.spec.name}-{backbone.weights_sha256[:16]}")  # ARCH/TAG names
        self.directory = Path(root) / self.backbone_key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._digests: dict[tuple[str, int, int], str] = {}

    def key(self, file: str | os.PathLike) -> str:
        """The cache key of an image file: sha256 of its bytes (memoised per path, size and mtime)."""
        stat = os.stat(file)
        memo = (str(file), stat.st_size, stat.st_mtime_ns)
        if memo not in self._digests:
            self._digests[memo] = file_digest(file)
        return self._digests[memo]

    def keys(self, files: list[str]) -> list[str]:
        """``key`` of every file (``None`` for a file that cannot be read: it is decoded and fails later)."""
        out = []
        for file in files:
            try:
                out.append(self.key(file))
            except OSError:
                out.append(None)
        return out

    def path(self, image_id: str) -> Path:
        """The file of one image id (ids with unsafe characters get a hash suffix)."""
        safe = _UNSAFE.sub("_", str(image_id))
        if safe != str(image_id):
            safe += "-" + hashlib.sha256(str(image_id).encode()).hexdigest()[:8]
        return self.directory / f"{safe}.safetensors"

    def has(self, image_id: str | None) -> bool:
        """Whether features for the key ``image_id`` are stored."""
        return image_id is not None and self.path(image_id).is_file()

    def put(self, image_ids: list[str], features: ImageFeatures) -> None:
        """Store row i of ``features`` under ``image_ids[i]`` (written atomically)."""
        pooled, tokens = features.pooled.float().cpu(), features.patch_tokens.float().cpu()
        for row, image_id in enumerate(image_ids):
            tensors = {"pooled": pooled[row].contiguous(), "patch_tokens": tokens[row].contiguous()}
            write_atomic(self.path(image_id), lambda p: save_file(tensors, str(p)))

    def get(self, image_ids: list[str]) -> ImageFeatures:
        """Stacked features of ``image_ids`` (CPU, fp32); ``KeyError`` naming the first missing id."""
        pooled, tokens = [], []
        for image_id in image_ids:
            try:
                tensors = load_file(str(self.path(image_id)))
            except FileNotFoundError:
                raise KeyError(f"no cached features for image {image_id!r} in {self.directory}") from None
            except (SafetensorError, OSError) as exc:
                raise KeyError(f"cached features of image {image_id!r} are unreadable ({exc}); delete "
                               f"{self.path(image_id)} to recompute them") from None
            pooled.append(tensors["pooled"])
            tokens.append(tensors["patch_tokens"])
        return ImageFeatures(torch.stack(pooled), torch.stack(tokens))


def encode_files(files: list[str], image_ids: list[str], backbone: Backbone, *, cache: FeatureCache | None = None,
                 batch_size: int = 32, num_workers: int | None = None, progress: bool = True) -> ImageFeatures:
    """Backbone features (CPU, fp32) for every file, in input order, reusing and filling ``cache``.

    Cache keys are the files' content hashes (``image_ids`` only name files in messages).
    Uses the test transform (no augmentation). A file that cannot be decoded raises
    ``ValueError`` naming it: training data must be complete.
    """
    keys = cache.keys(files) if cache is not None else [None] * len(files)
    todo = [i for i, key in enumerate(keys) if cache is None or not cache.has(key)]
    computed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for indices, pixels, bad in image_batches([files[i] for i in todo], backbone, batch_size=batch_size,
                                              num_workers=num_workers, progress=progress,
                                              desc="encoding images"):
        if bad:
            index, reason = bad[0]
            raise ValueError(f"cannot decode training image {files[todo[index]]!r}: {reason}")
        features = backbone.encode_images(pixels).to("cpu")
        rows = [todo[i] for i in indices]
        if cache is not None:
            cache.put([keys[i] for i in rows], features)
        for row, index in enumerate(rows):
            computed[index] = (features.pooled[row], features.patch_tokens[row])
    cached = [i for i in range(len(files)) if i not in computed]
    if cached:
        stored = cache.get([keys[i] for i in cached])
        for row, index in enumerate(cached):
            computed[index] = (stored.pooled[row], stored.patch_tokens[row])
    return ImageFeatures(torch.stack([computed[i][0] for i in range(len(files))]),
                         torch.stack([computed[i][1] for i in range(len(files))]))
