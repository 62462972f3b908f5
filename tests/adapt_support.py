"""Helpers shared by the test_adapt_* modules: a few real sample images and a fast, seeded loop config."""

from __future__ import annotations

from classify.adapt import AdaptConfig
from tests.mhadapter_support import SAMPLE, sample_images

#: One optimizer step over a few images: exercises every code path quickly on 2 CPU cores.
FAST_ADAPT = AdaptConfig(epochs=1, batch_size=4, n_crops=2, lr=5e-2, num_workers=0, seed=0)


def few_files(n: int = 4) -> list[str]:
    """The first ``n`` bundled Stuttgart images (absolute paths)."""
    return sample_images()["file"].tolist()[:n]


__all__ = ["FAST_ADAPT", "SAMPLE", "few_files", "sample_images"]
