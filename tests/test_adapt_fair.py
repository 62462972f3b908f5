"""FAIR-style (reconstructed) pieces (methods §4.3-4.4) on hand-made tensors, plus its trainables."""

from __future__ import annotations

import math

import pytest
import torch

from classify.adapted_visual import AdaptationError, expected_layer_norm_count
from classify.fair import (AMBIGUITY_WEIGHTS, FairConfig, FairHead, anchor_weights, build_fair_head, fair_loss,
                           select_crops, weighted_cross_entropy)
from classify.microclip import RunningMean
from classify.schema import get_attribute


def test_anchor_weights_are_a_masked_softmax_against_the_handcrafted_embedding():
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]],
                            [[0.0, 1.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    beta = anchor_weights(anchors, mask, h, temperature=2.0)
    e2 = math.exp(2.0)
    assert torch.allclose(beta[0], torch.tensor([e2 / (e2 + 1), 1 / (e2 + 1), 0.0]), atol=1e-6)  # cos 1 and 0
    assert torch.allclose(beta[1], torch.tensor([1.0, 0.0, 0.0]))  # one real description: weight 1


def test_select_crops_keeps_the_top_k_and_weights_them_by_relevance():
    e = torch.eye(3)
    full = torch.tensor([[0.9, 0.1, 0.5]])
    full = full / full.norm()
    crops = e.unsqueeze(0)  # relevance of crop k = full[k]
    alpha, pooled = select_crops(crops, full, top_k=2, temperature=1.0)
    r = full[0]
    kept = torch.softmax(torch.stack([r[0], r[2]]), dim=0)
    assert torch.allclose(alpha[0], torch.tensor([kept[0], 0.0, kept[1]]), atol=1e-6)
    assert torch.allclose(pooled[0], torch.nn.functional.normalize(alpha[0], dim=0), atol=1e-6)
    alpha_all, _ = select_crops(crops, full, top_k=10, temperature=1.0)  # k larger than K: all crops kept
    assert (alpha_all > 0).all()


def test_ambiguity_weights_by_hand():
    q_cls = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    pseudo = torch.tensor([1, 1])
    assert torch.allclose(AMBIGUITY_WEIGHTS["agreement"](q_cls, q_cls, pseudo), torch.tensor([0.4 / 0.6, 1.0]))
    q_las = torch.tensor([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33]])
    margin = AMBIGUITY_WEIGHTS["margin"](q_las, q_las, torch.tensor([0, 0]))
    assert torch.allclose(margin, torch.tensor([1 - 0.3 / 0.5, 1 - 0.33 / 0.34]))
    assert torch.equal(AMBIGUITY_WEIGHTS["none"](q_las, q_las, torch.tensor([0, 0])), torch.ones(2))


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([0, 0])
    ce = [math.log(2.0), -math.log(0.75)]
    assert float(weighted_cross_entropy(logits, targets, torch.tensor([1.0, 0.0]))) == pytest.approx(ce[0] / 2)
    assert float(weighted_cross_entropy(logits, targets, torch.tensor([0.5, 1.0]))) == pytest.approx(
        (0.5 * ce[0] + ce[1]) / 2)


def test_alignment_score_forms(tiny_backbone):
    head = build_fair_head(tiny_backbone, get_attribute("glare"))
    g = torch.Generator().manual_seed(0)
    crops = torch.nn.functional.normalize(torch.randn(2, 3, tiny_backbone.embed_dim, generator=g), dim=-1)
    full = torch.nn.functional.normalize(torch.randn(2, tiny_backbone.embed_dim, generator=g), dim=-1)
    alpha, pooled = select_crops(crops, full, head.config.top_k, head.config.crop_temperature)
    assert torch.allclose(head.alignment_score(crops, full), pooled @ head.class_anchors().T, atol=1e-6)
    double = FairHead(head.attribute, head.visual, _text_of(head), FairConfig(las_form="double_sum"))
    beta = anchor_weights(head.anchors, head.anchor_mask, head.handcrafted, head.config.description_temperature)
    anchors = torch.nn.functional.normalize(head.anchors, dim=-1)
    expected = torch.stack([torch.stack([sum(alpha[b, k] * sum(beta[c, m] * (crops[b, k] @ anchors[c, m])
                                                              for m in range(anchors.shape[1]))
                                             for k in range(3)) for c in range(2)]) for b in range(2)])
    assert torch.allclose(double.alignment_score(crops, full), expected, atol=1e-5)


def _text_of(head):
    from classify.descriptions import ClassText

    return ClassText(head.handcrafted, head.anchors.detach(), head.anchor_mask, head.handcrafted, head.handcrafted)


def test_trainables_are_layer_norms_and_the_anchors(tiny_backbone):
    head = build_fair_head(tiny_backbone, get_attribute("weather"))
    c, m, e = head.anchors.shape
    assert (c, e) == (5, tiny_backbone.embed_dim) and m >= 8
    assert sum(p.numel() for p in head.trainable_parameters()) == \
        expected_layer_norm_count(tiny_backbone.width, tiny_backbone.n_blocks) + c * m * e
    assert not head.handcrafted.requires_grad and head.anchor_mask.dtype == torch.bool
    torch.manual_seed(0)
    loss, stats = fair_loss(head, torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224),
                            torch.randn(2, 2, 3, 224, 224), RunningMean())
    loss.backward()
    assert all(p.grad is not None for p in head.trainable_parameters())
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    assert 0.0 <= stats["mean_weight"] <= 1.0
    assert float(loss.detach()) == pytest.approx(stats["ce"] + stats["fairness"], rel=1e-5)


def test_config_refuses_unknown_options():
    with pytest.raises(AdaptationError, match="weighting"):
        FairConfig(weighting="entropy")
    with pytest.raises(AdaptationError, match="las_form"):
        FairConfig(las_form="max")
