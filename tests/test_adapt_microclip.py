"""microCLIP pieces (methods §3, §8 tests 4-6): value path, NCut, SOAP, fusion, DKA, losses, trainables."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from classify.adapted_visual import AdaptationError, AdaptedVisual, check_value_path_support, \
    expected_layer_norm_count, value_path
from classify.microclip import (SOAP, MicroCLIPConfig, RunningMean, aggregate_knowledge, build_microclip_head,
                                crop_composite, fairness_loss, fuse_logits, microclip_loss, ncut_foreground)
from classify.schema import get_attribute


def _last_block_input(visual, pixels):
    x = visual._embeds(pixels)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x


@torch.no_grad()
def test_value_path_equals_self_only_attention_computed_token_by_token(tiny_backbone):
    visual = tiny_backbone.model.visual
    x = _last_block_input(visual, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    block = visual.transformer.resblocks[-1]
    z = value_path(block, x)
    # a one-token sequence can only attend to itself: the reference semantics, one token at a time
    for i in (0, 1, 57, 196):
        assert torch.allclose(z[:, i], block(x[:, i:i + 1])[:, 0], atol=1e-5)
    # and an attention mask that keeps only the diagonal gives the same for all tokens at once
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
    assert torch.allclose(z, block(x, attn_mask=mask), atol=1e-5)
    assert not torch.allclose(z, block(x), atol=1e-3)  # the real attention differs


@torch.no_grad()
def test_adapted_tower_starts_equal_to_the_frozen_backbone(tiny_backbone):
    visual = tiny_backbone.model.visual
    adapted = AdaptedVisual(visual)
    pixels = torch.randn(2, 3, 224, 224)
    pooled, tokens = adapted(pixels)
    assert torch.allclose(pooled, tiny_backbone.encode_images(pixels).pooled, atol=1e-5)
    x = _last_block_input(visual, pixels)
    assert tokens.shape == (2, 196, tiny_backbone.width)
    assert torch.allclose(tokens, visual.ln_post(value_path(visual.transformer.resblocks[-1], x))[:, 1:], atol=1e-5)
    adapted.norms["ln_post__weight"].data.mul_(2.0)  # our LayerNorm is used, the backbone's is untouched
    assert not torch.allclose(adapted(pixels)[0], pooled, atol=1e-3)
    assert torch.allclose(tiny_backbone.encode_images(pixels).pooled, pooled, atol=1e-5)


def test_value_path_gate_refuses_other_attention_blocks(tiny_backbone):
    import copy

    visual = copy.deepcopy(tiny_backbone.model.visual)
    visual.transformer.resblocks[1].attn = nn.Identity()
    with pytest.raises(AdaptationError, match="block 1"):
        check_value_path_support(visual)
    with pytest.raises(AdaptationError, match="VisionTransformer"):
        check_value_path_support(nn.Linear(2, 2))


def test_ncut_selects_one_cluster_and_the_sign_rule_keeps_the_strongest_token(monkeypatch):
    g = torch.Generator().manual_seed(0)
    a, b = torch.zeros(8), torch.zeros(8)
    a[0], b[1] = 1.0, 1.0
    bridge = 0.5 * (a + b)  # dot 0.5 with both clusters: keeps the graph connected (a clear Fiedler gap)
    tokens = torch.cat([a + 0.05 * torch.randn(5, 8, generator=g), b + 0.05 * torch.randn(11, 8, generator=g),
                        bridge[None]])
    order = torch.randperm(17, generator=g)
    tokens = tokens[order].unsqueeze(0)
    in_a, is_bridge = (tokens[0] @ a) > 0.8, order == 16
    mask = ncut_foreground(tokens)[0]
    core = ~is_bridge
    assert torch.equal(mask[core], in_a[core]) or torch.equal(mask[core], ~in_a[core])
    # recompute the Fiedler vector: the selected cluster contains argmax |f|
    sim = tokens[0] @ tokens[0].T
    adj = torch.where(sim > 0.2, torch.ones_like(sim), torch.full_like(sim, 1e-6))
    d = adj.sum(-1)
    lap = (torch.diag(d) - adj) / (d.sqrt()[:, None] + 1e-6) / (d.sqrt()[None] + 1e-6)
    f = torch.linalg.eigh(lap)[1][:, 1]
    assert mask[f.abs().argmax()] and mask.sum() < 17
    # the eigenvector's sign is arbitrary: the mask must not depend on it
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: (lambda r: (r[0], -r[1]))(real_eigh(m)))
    assert torch.equal(ncut_foreground(tokens)[0], mask)
    assert ncut_foreground(tokens, affinity="cosine").shape == (1, 17)


def test_soap_identity_init_is_plain_attention_pooling_and_the_zero_null_token_changes_nothing():
    g = torch.Generator().manual_seed(0)
    width, embed = 16, 8
    tokens, proj = torch.randn(3, 10, width, generator=g), torch.randn(width, embed, generator=g)
    mask = torch.rand(3, 10, generator=g) > 0.5
    soap = SOAP(width)
    q0 = (mask[..., None] * tokens).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    a = (torch.einsum("bnw,bw->bn", tokens, q0) / math.sqrt(width)).softmax(-1)
    expected = nn.functional.normalize(torch.einsum("bn,bnw->bw", a, tokens) @ proj, dim=-1)
    fg = soap(tokens, mask, proj)
    assert torch.allclose(fg, expected, atol=1e-5)  # the zero null slot only rescales f
    learnable = SOAP(width, learnable_null=True)
    learnable.null.data.normal_(generator=g)
    assert not torch.allclose(learnable(tokens, mask, proj), fg, atol=1e-4)


def test_token_fusion_crop_composite_and_knowledge_aggregation_by_hand():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    classifier = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # rows are re-normalised
    assert torch.allclose(fuse_logits(e1, e2, classifier, 0.5), torch.tensor([[50.0, 50.0]]))
    assert torch.allclose(fuse_logits(e1, e2, classifier, 0.25), torch.tensor([[25.0, 75.0]]))
    crops = torch.stack([e1[0], e2[0]]).unsqueeze(0)  # relevance to e1: (1, 0)
    w1 = math.e / (math.e + 1)
    expected = torch.tensor([[w1, 1 - w1]]) / math.hypot(w1, 1 - w1)
    assert torch.allclose(crop_composite(crops, e1, 1.0), expected, atol=1e-6)
    assert torch.allclose(crop_composite(crops, e1, 50.0), e1, atol=1e-6)  # sharp temperature -> the best crop
    s = aggregate_knowledge(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.75)
    assert torch.allclose(s, torch.tensor([[0.75, 0.25]]))


def test_fairness_terms_and_the_running_mean_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25])
    assert math.isclose(float(fairness_loss(p)), -2 / 3 * (math.log(0.5) + 2 * math.log(0.25)), rel_tol=1e-6)
    assert float(fairness_loss(torch.full((4,), 0.25))) == pytest.approx(-2 * math.log(0.25))
    assert float(fairness_loss(p, prior=p)) == pytest.approx(0.0, abs=1e-7)
    assert float(fairness_loss(p, prior=torch.tensor([0.25, 0.5, 0.25]))) == pytest.approx(0.25 * math.log(2), rel=1e-5)
    running = RunningMean()
    first = running.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(first, torch.tensor([0.5, 0.5]))
    second = running.update(torch.tensor([[1.0, 0.0]], requires_grad=True))
    assert torch.allclose(second, torch.tensor([0.75, 0.25])) and second.requires_grad
    running.reset()
    assert torch.allclose(running.update(torch.tensor([[0.2, 0.8]])), torch.tensor([0.2, 0.8]))


def test_trainable_parameters_are_layer_norms_qkv_and_the_head(tiny_backbone):
    head = build_microclip_head(tiny_backbone, get_attribute("weather"))
    w, e, blocks = tiny_backbone.width, tiny_backbone.embed_dim, tiny_backbone.n_blocks
    trainable = head.trainable_parameters()
    assert sum(p.numel() for p in trainable) == expected_layer_norm_count(w, blocks) + 3 * w * w + 5 * e
    assert expected_layer_norm_count(768, 12) == 39_936  # methods §3.2, ViT-B/16
    assert head.classifier.shape == (5, e) and head.prior.shape == (5, e) and not head.prior.requires_grad
    assert all(s.weight.shape == (w, w) for s in (head.soap.q_proj, head.soap.k_proj, head.soap.v_proj))
    names = {n for n, p in head.named_parameters()}
    assert {n for n in names if n.startswith("visual.norms.")} == {n for n in names if "norms" in n}
    assert len([n for n in names if n.startswith("visual.norms.")]) == 2 * (2 * blocks + 2)
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    learnable = build_microclip_head(tiny_backbone, get_attribute("weather"), MicroCLIPConfig(null_token="learnable"))
    assert sum(p.numel() for p in learnable.trainable_parameters()) == sum(p.numel() for p in trainable) + w


def test_one_loss_step_reaches_only_the_trainables(tiny_backbone):
    torch.manual_seed(0)
    head = build_microclip_head(tiny_backbone, get_attribute("glare"))
    weak, strong, crops = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224), torch.randn(2, 2, 3, 224, 224)
    loss, stats = microclip_loss(head, weak, strong, crops, RunningMean())
    assert math.isclose(float(loss.detach()), stats["ce"] + stats["fairness"], rel_tol=1e-5)
    assert stats["pseudo_labels"].shape == (2,)
    loss.backward()
    assert all(p.grad is not None for p in head.trainable_parameters())
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    assert head.prior.grad is None


def test_config_refuses_unknown_options():
    with pytest.raises(AdaptationError, match="ncut_affinity"):
        MicroCLIPConfig(ncut_affinity="l2")
    with pytest.raises(AdaptationError, match="gamma"):
        MicroCLIPConfig(gamma=1.5)


def test_prior_matched_fairness_estimates_the_label_prior_from_zero_shot(tiny_backbone, tmp_path):
    from classify.adapt import adapt_attribute, zero_shot_label_prior
    from tests.adapt_support import FAST_ADAPT, few_files

    head = build_microclip_head(tiny_backbone, get_attribute("quality"))
    prior = zero_shot_label_prior(head, few_files(3), tiny_backbone, progress=False)
    assert prior.shape == (3,) and float(prior.sum()) == pytest.approx(1.0) and float(prior.min()) >= 1 / 6
    assert sorted((prior * 6).round().tolist()) in ([1.0, 1.0, 4.0], [1.0, 2.0, 3.0])  # 3 images, add-one smoothing
    result = adapt_attribute("microclip", "quality", few_files(3), tiny_backbone, tmp_path, config=FAST_ADAPT,
                             method_config=MicroCLIPConfig(fairness="prior"), progress=False)
    assert torch.allclose(result.head.label_prior, prior)


@torch.no_grad()
def test_teacher_scores_mix_the_static_prior_and_the_dynamic_head(tiny_backbone):
    from dataclasses import replace

    torch.manual_seed(0)
    head = build_microclip_head(tiny_backbone, get_attribute("platform")).eval()
    weak, crops = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 3, 224, 224)
    cls, fg = head.encode(weak)
    crop_cls = nn.functional.normalize(head.visual(crops.flatten(0, 1), with_tokens=False)[0], dim=-1).view(2, 3, -1)
    static = crop_composite(crop_cls, cls, 1.0) @ head.prior.T
    dynamic = nn.functional.normalize(0.5 * cls + 0.5 * fg, dim=-1) @ nn.functional.normalize(head.classifier, dim=-1).T
    for gamma in (0.0, 0.5, 1.0):
        head.config = replace(head.config, gamma=gamma)
        assert torch.allclose(head.teacher_scores(weak, crops), gamma * static + (1 - gamma) * dynamic, atol=1e-5)


def test_ncut_stays_in_fp32_under_bf16_autocast(monkeypatch):
    tokens = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(0))
    expected = ncut_foreground(tokens)
    real_eigh, seen = torch.linalg.eigh, []
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: seen.append(m.dtype) or real_eigh(m))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # without the guard the affinities would be bf16
        assert torch.equal(ncut_foreground(tokens), expected)
    assert seen == [torch.float32]


def test_vit_b16_trainable_count_matches_methods_3_2():
    import open_clip

    from classify.adapted_visual import AdaptedVisual

    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).visual
    norms = sum(p.numel() for p in AdaptedVisual(visual).parameters())
    soap = sum(p.numel() for p in SOAP(visual.transformer.width).parameters())
    assert norms == 39_936 and soap == 1_769_472
    assert norms + soap + 512 * 5 == 1_809_408 + 512 * 5  # "1,809,408 + 512·C"
