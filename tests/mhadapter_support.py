"""Fixtures shared by the test_mhadapter_* modules (imported by name where used).

The labels are real: Mapillary's own ``camera_type`` of the 19 bundled Stuttgart images
(spherical = panoramic, perspective = non-panoramic), never a model's prediction.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "geo" / "sample_area" / "stuttgart"
FAST = dict(epochs=15, batch_size=8, lr=1e-2, warmup_epochs=2, patience=100, mode="cached", num_workers=0)


def sample_images() -> pd.DataFrame:
    """The bundled sample's image table with an absolute ``file`` column."""
    images = pd.read_parquet(SAMPLE / "images.parquet")
    images["file"] = [str(SAMPLE / p) for p in images["path"]]
    return images


@pytest.fixture(scope="session")
def pano_csv(tmp_path_factory) -> Path:
    """A ``path,label,image_id`` CSV of the sample images labelled by camera type."""
    images = sample_images()
    path = tmp_path_factory.mktemp("labels") / "pano_status.csv"
    pd.DataFrame({"path": images["file"], "label": images["camera_type"], "image_id": images["image_id"]}).to_csv(
        path, index=False)
    return path


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def trained_heads(tmp_path_factory, tiny_backbone, pano_csv, feature_cache_dir):
    """A heads folder with a pano_status head trained (fast mode) on the sample; returns the TrainResult."""
    from classify.train import TrainConfig, train_attribute

    out = tmp_path_factory.mktemp("heads")
    return train_attribute("pano_status", pano_csv, tiny_backbone, out, config=TrainConfig(**FAST),
                           cache_dir=feature_cache_dir, progress=False)
