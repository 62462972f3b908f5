"""CLIP-Adapter and CoOp baselines (methods §2.8): seeded, and at least as good as ZeroR on a separable toy set."""

from __future__ import annotations

import pytest
import torch

from classify.backbone import ImageFeatures
from classify.baselines import BaselineConfig, ZeroRHead, baseline_lr, fit_clip_adapter, zero_r_reference
from classify.heads import zero_shot_heads
from classify.prompt_learning import N_CTX, PromptLearner, fit_coop
from classify.schema import get_attribute

WEATHER = get_attribute("weather")
TOY = BaselineConfig(epochs=12, batch_size=32, lr=0.5, patience=12)
COUNTS = [24, 12, 8, 8, 8]  # ZeroR ("clear") scores 0.4


def _toy(backbone, seed: int):
    """Images whose pooled embeddings sit near their class's prompt embedding (separable, imbalanced)."""
    text = zero_shot_heads(backbone, [WEATHER])["weather"].text_embeddings
    labels = torch.tensor([c for c, n in enumerate(COUNTS) for _ in range(n)])
    noise = torch.randn(len(labels), text.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.02
    pooled = text[labels].clone() + noise
    return ImageFeatures(pooled, torch.zeros(len(labels), 1, 1)), labels.tolist(), text


def _accuracy(head, features, labels) -> float:
    with torch.no_grad():
        return float((head(features).argmax(-1) == torch.tensor(labels)).float().mean())


def _scrambled(text: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings in the wrong class order: the heads must learn the mapping, not get it for free."""
    return text[torch.tensor([1, 2, 3, 4, 0])]


@pytest.mark.timeout(120)
def test_clip_adapter_is_seeded_and_beats_zero_r(tiny_backbone):
    train, train_y, text = _toy(tiny_backbone, seed=1)
    val, val_y, _ = _toy(tiny_backbone, seed=2)
    zero_r = _accuracy(ZeroRHead(WEATHER, COUNTS), val, val_y)
    config = BaselineConfig(epochs=40, batch_size=16, lr=0.5, patience=40)
    text = _scrambled(text)
    assert _accuracy(zero_shot_heads(tiny_backbone, [WEATHER])["weather"].__class__(WEATHER, text, 100.0), val,
                     val_y) == 0.0  # with the scrambled prompts, zero-shot gets every image wrong
    first, info = fit_clip_adapter(WEATHER, text, tiny_backbone.logit_scale, train, train_y, val, val_y, config)
    again, _ = fit_clip_adapter(WEATHER, text, tiny_backbone.logit_scale, train, train_y, val, val_y, config)
    assert first.head_id == again.head_id and torch.equal(first(val), again(val))  # same seed, same numbers
    assert _accuracy(first, val, val_y) > zero_r == pytest.approx(0.4)
    other, _ = fit_clip_adapter(WEATHER, text, tiny_backbone.logit_scale, train, train_y, val, val_y,
                                BaselineConfig(**{**config.__dict__, "seed": 7}))
    assert other.head_id != first.head_id  # the seed is what fixes the weights
    assert sum(p.numel() for p in first.adapter.parameters()) == 2 * tiny_backbone.embed_dim ** 2 // 4  # no bias
    assert info["best_epoch"] < info["epochs_run"] <= config.epochs


@pytest.mark.timeout(180)
def test_coop_learns_context_through_the_text_tower_seeded_and_beats_zero_r(tiny_backbone):
    train, train_y, _ = _toy(tiny_backbone, seed=1)
    val, val_y, _ = _toy(tiny_backbone, seed=2)
    zero_r = _accuracy(ZeroRHead(WEATHER, COUNTS), val, val_y)
    first, info = fit_coop(tiny_backbone, WEATHER, train, train_y, val, val_y, TOY)
    again, _ = fit_coop(tiny_backbone, WEATHER, train, train_y, val, val_y, TOY)
    assert first.head_id == again.head_id and torch.equal(first(val), again(val))
    assert info["n_ctx"] == N_CTX == 8
    assert _accuracy(first, val, val_y) > zero_r  # strictly better than the majority class here


def test_coop_prompt_learner_matches_the_text_tower_and_trains_only_the_context(tiny_backbone):
    learner = PromptLearner(tiny_backbone, WEATHER)
    assert [name for name, _ in learner.named_parameters()] == ["ctx"] and list(learner.state_dict()) == ["ctx"]
    with torch.no_grad():  # the context set to the placeholder word's own embedding gives the tokenised prompt exactly
        learner.ctx.copy_(tiny_backbone.model.token_embedding(learner.tokens[0, 1:1 + N_CTX]).float())
        ours = learner()
    prompts = [" ".join(["X"] * N_CTX) + f" {WEATHER.phrases[c]}." for c in WEATHER.classes]
    reference = tiny_backbone._encode_text(prompts)
    assert torch.allclose(ours, reference, atol=1e-5)
    loss = learner().sum()
    loss.backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.model.parameters())  # the tower stays frozen


def test_baseline_schedule_and_zero_r_sources():
    config = BaselineConfig(epochs=11)
    assert baseline_lr(0, config) == 1e-5 and baseline_lr(1, config) == pytest.approx(2e-3)
    assert baseline_lr(10, config) == pytest.approx(0.5 * 2e-3 * (1 + torch.cos(torch.tensor(0.9 * torch.pi)).item()))
    name, head, note = zero_r_reference(WEATHER, [1, 5, 0, 0, 0])
    assert name == "zero_r" and head.head_id == "zero_r:cloudy" and "training labels" in note
    name, head, note = zero_r_reference(WEATHER, sidecar={"hyperparameters": {"train_class_counts": [0, 0, 9, 1, 0]}},
                                        eval_counts=[5, 0, 0, 0, 0])
    assert name == "zero_r" and head.head_id == "zero_r:foggy" and "checkpoint" in note
    name, head, note = zero_r_reference(WEATHER, eval_counts=[0, 0, 0, 0, 3])
    assert name == "zero_r (oracle)" and head.head_id == "zero_r:snowy" and "oracle" in note
