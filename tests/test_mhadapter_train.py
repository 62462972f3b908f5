"""Training: schedule, class weights, learning on real sample images, resuming, both modes."""

from __future__ import annotations

import math

import pytest
import torch

from classify.checkpoints import load_head
from classify.features import FeatureCache, encode_files
from classify.labels import read_labels
from classify.mhadapter import AdapterConfig
from classify.schema import ATTRIBUTES
from classify.train import (CLASS_WEIGHTINGS, TrainConfig, TrainingError, learning_rate, predict_logits,
                            split_labels, train_attribute)
from tests.mhadapter_support import FAST


def test_schedule_warms_up_linearly_from_1e_5_then_follows_a_cosine():
    config = TrainConfig()
    assert learning_rate(0, config) == pytest.approx(1e-5)
    assert learning_rate(1, config) == pytest.approx(1e-5 + (5e-4 - 1e-5) / 5)
    assert learning_rate(5, config) == pytest.approx(5e-4)
    assert learning_rate(5 + 95 // 2, config) == pytest.approx(0.5 * 5e-4 * (1 + math.cos(math.pi * 47 / 95)))
    assert learning_rate(99, config) < 1e-6
    rates = [learning_rate(e, config) for e in range(5, 100)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_inverse_weights_equal_the_references_uniform_weights():
    counts = [90, 9, 1]
    inverse = CLASS_WEIGHTINGS["inverse"](counts)
    uniform = torch.tensor([(1 / 3) / (n / sum(counts)) for n in counts])  # reference "uniform" (MHA-P6)
    torch.testing.assert_close(inverse, uniform / uniform.sum())
    torch.testing.assert_close(inverse * torch.tensor(counts, dtype=torch.float32), torch.full((3,), inverse[0] * 90))
    assert CLASS_WEIGHTINGS["none"](counts) is None
    with pytest.raises(TrainingError, match="class weighting"):
        TrainConfig(class_weighting="uniform")


def test_training_on_real_images_drives_the_loss_down_and_fits_the_training_set(
        trained_heads, tiny_backbone, pano_csv, feature_cache_dir):
    history = trained_heads.fit.history
    assert len(history) == FAST["epochs"]
    assert history[-1]["train_loss"] < 0.2 * history[0]["train_loss"]
    head = load_head(trained_heads.checkpoint, tiny_backbone)
    data = read_labels(pano_csv, ATTRIBUTES["pano_status"])
    train, _ = split_labels(data, TrainConfig(**FAST))
    features = encode_files(list(train.files), list(train.image_ids), tiny_backbone,
                            cache=FeatureCache(feature_cache_dir, tiny_backbone), progress=False)
    predicted = predict_logits(head, features, 8, tiny_backbone.device).argmax(-1)
    assert predicted.tolist() == list(train.labels)  # the selected head fits every training image
    assert (trained_heads.n_train, trained_heads.n_val) == (15, 4)
    best = trained_heads.fit.best_metrics
    assert best["macro_f1"] == max(h["val_macro_f1"] for h in history)  # selection on val macro-F1


class _Crash(Exception):
    pass


def test_resuming_continues_exactly_where_training_stopped(tmp_path, tiny_backbone, pano_csv, feature_cache_dir,
                                                           monkeypatch):
    import classify.train as train_module

    config, adapter = TrainConfig(**{**FAST, "epochs": 6}), AdapterConfig(heads=4, blend=0.5)
    run = dict(config=config, adapter=adapter, cache_dir=feature_cache_dir, progress=False)
    straight = train_attribute("pano_status", pano_csv, tiny_backbone, tmp_path / "a", **run)

    real_save = train_module.save_train_state

    def crash_after_epoch_2(*args, **kwargs):
        real_save(*args, **kwargs)
        if kwargs["epoch"] == 2:
            raise _Crash

    monkeypatch.setattr(train_module, "save_train_state", crash_after_epoch_2)
    with pytest.raises(_Crash):
        train_attribute("pano_status", pano_csv, tiny_backbone, tmp_path / "b", **run)
    monkeypatch.setattr(train_module, "save_train_state", real_save)
    with pytest.raises(TrainingError, match="other hyperparameters"):
        train_attribute("pano_status", pano_csv, tiny_backbone, tmp_path / "b",
                        **{**run, "config": TrainConfig(**{**FAST, "epochs": 7})}, resume=True)
    resumed = train_attribute("pano_status", pano_csv, tiny_backbone, tmp_path / "b", **run, resume=True)
    assert resumed.fit.history == straight.fit.history
    for name, tensor in straight.head.state_dict().items():
        torch.testing.assert_close(resumed.head.state_dict()[name], tensor, rtol=0, atol=0)


def test_augment_mode_runs_the_backbone_on_augmented_images(tmp_path, tiny_backbone, pano_csv, monkeypatch):
    calls = []
    real = tiny_backbone.encode_images
    monkeypatch.setattr(tiny_backbone, "encode_images", lambda px: calls.append(px.shape[0]) or real(px))
    config = TrainConfig(**{**FAST, "epochs": 2, "mode": "augment"})
    result = train_attribute("pano_status", pano_csv, tiny_backbone, tmp_path, config=config, progress=False)
    assert sum(calls) == 4 + 2 * 15  # validation encoded once, the 15 training images every epoch
    assert all(math.isfinite(h["train_loss"]) for h in result.fit.history)
    assert load_head(result.checkpoint, tiny_backbone).method == "mhadapter"


def test_a_single_image_per_class_cannot_be_validated(tmp_path, tiny_backbone, pano_csv):
    lines = pano_csv.read_text().splitlines()
    tiny = tmp_path / "two.csv"
    tiny.write_text("\n".join([lines[0]] + [l for l in lines[1:] if "spherical" in l][:1]
                              + [l for l in lines[1:] if "perspective" in l][:1]))
    with pytest.raises(TrainingError, match="validation split"):
        train_attribute("pano_status", tiny, tiny_backbone, tmp_path / "out", config=TrainConfig(**FAST),
                        progress=False)
