"""microCLIP (methods §3): unsupervised adaptation by self-training on a city's own images.

    pixels ──► adapted tower (own LayerNorms) ──► CLS = normalize(ln_post(y₀)·proj)
                                             └─► value-path patch tokens P (B, N, W)
    P ──► NCut saliency mask m ──► SOAP: q₀ = mean of foreground tokens, one attention over
          [P; null] with identity-initialised Q/K/V maps ──► FG = normalize(f·proj)
    TokenFusion logits = 100·[ρ·CLS·Ŵ*ᵀ + (1−ρ)·FG·Ŵ*ᵀ]        (Ŵ*: row-normalised learnable head)

Pseudo-labels (``teacher_scores``): s = γ·c̄·W_LLMᵀ + (1−γ)·normalize(½CLS_w + ½FG_w)·Ŵ*ᵀ, the
Dynamic Knowledge Aggregation of the frozen description prior W_LLM on the crop composite c̄
(softmax-weighted crop CLS features) and the evolving fused feature; ŷ = argmax s, every sample
kept, no EMA (§3.4). Trainables: visual LayerNorms, Q/K/V_proj, the head W*, and the null token
when ``null_token="learnable"``. Pitfalls resolved: value path for the last block only (MC-P7),
W from the model (MC-P8), CenterCrop at test time (MC-P9, in ``classify.predict``), correctly
named branches (MC-P10), vectorised NCut in fp32 with a cosine option (MC-P11; the eigenvector's
sign is fixed before thresholding, see ``ncut_foreground``), crop temperature exposed (MC-P12),
weight decay explicit (MC-P14), truncated over-long descriptions (MC-P16), validated description
keys (MC-P17), no unused zero-shot copy (MC-P18), a prior-matched fairness option (MC-P19).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from classify.adapted_visual import LOGIT_SCALE, AdaptationError, AdaptedHead, AdaptedVisual
from classify.backbone import Backbone, require_patch_tokens
from classify.descriptions import ClassText, class_text
from classify.schema import Attribute



@dataclass(frozen=True)
class MicroCLIPConfig:
    """microCLIP settings; the defaults are the reference's (identical for every dataset)."""

    fusion_ratio: float = 0.5  # ρ: weight of the CLS logits in TokenFusion
    gamma: float = 0.5  # γ: weight of the static prior in Dynamic Knowledge Aggregation
    ncut_threshold: float = 0.2  # τ on the affinity
    ncut_affinity: str = "dot"  # dot (reference: raw dot products of LN'd tokens) | cosine
    null_token: str = "zero"  # zero (reference default) | learnable
    crop_temperature: float = 1.0  # softmax temperature over crop relevances (MC-P12; WCA uses e⁴)
    ce_weight: float = 1.0
    fairness_weight: float = 1.0
    fairness: str = "uniform"  # uniform (MUST/reference) | prior (KL to the zero-shot label frequencies, MC-P19)

    def __post_init__(self):
        if self.ncut_affinity not in ("dot", "cosine"):
            raise AdaptationError(f"ncut_affinity must be dot or cosine, got {self.ncut_affinity!r}")
        if self.null_token not in ("zero", "learnable"):
            raise AdaptationError(f"null_token must be zero or learnable, got {self.null_token!r}")
        if self.fairness not in ("uniform", "prior"):
            raise AdaptationError(f"fairness must be uniform or prior, got {self.fairness!r}")
        for name in ("fusion_ratio", "gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AdaptationError(f"{name} must lie in [0, 1]")

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)


@torch.no_grad()
def ncut_foreground(tokens: torch.Tensor, threshold: float = 0.2, eps: float = 1e-6,
                    affinity: str = "dot") -> torch.Tensor:
    """Normalised-cut saliency mask (methods §3.2.3): tokens (B, N, W) -> boolean mask (B, N).

    A_ij = 1 if P_i·P_j > τ else ε (raw dot products, or cosines with ``affinity="cosine"``);
    L = D^{-1/2}(D − A)D^{-1/2}; f = the second-smallest eigenvector, its sign fixed so that the
    token with the largest |f| is positive; foreground m = f > std(f). Runs in fp32 without gradients.
    """
    with torch.autocast(tokens.device.type, enabled=False):  # thresholds and eigh stay in fp32 under AMP
        return _ncut_fp32(tokens.detach().float(), threshold, eps, affinity)


def _ncut_fp32(p: torch.Tensor, threshold: float, eps: float, affinity: str) -> torch.Tensor:
    if affinity == "cosine":
        p = nn.functional.normalize(p, dim=-1)
    similarity = p @ p.transpose(1, 2)
    a = torch.where(similarity > threshold, torch.ones_like(similarity), torch.full_like(similarity, eps))
    d = a.sum(dim=-1)
    inv_sqrt = 1.0 / (d.sqrt() + eps)
    laplacian = inv_sqrt.unsqueeze(-1) * (torch.diag_embed(d) - a) * inv_sqrt.unsqueeze(-2)
    _, vectors = torch.linalg.eigh(laplacian)
    f = vectors[..., 1]
    # orient f so the token with the largest |f| is positive *before* thresholding: the reference
    # thresholds first and then inverts the mask, so its result depends on the arbitrary sign LAPACK
    # returns (with a negative sign and no f > std(f), it selects every token); ours equals the
    # reference's whenever LAPACK's sign is the positive one
    strongest = f.abs().argmax(dim=-1, keepdim=True)
    f = f * f.gather(-1, strongest).sign()
    return f > f.std(dim=-1, keepdim=True)


class SOAP(nn.Module):
    """Saliency-Oriented Attention Pooling: tokens (B, N, W) + mask (B, N) -> FG (B, E), normalised."""

    def __init__(self, width: int, learnable_null: bool = False):
        super().__init__()
        self.width = width
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width, bias=False) for _ in range(3))
        for layer in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.eye_(layer.weight)
        if learnable_null:
            self.null = nn.Parameter(torch.zeros(1, width))
        else:
            self.register_buffer("null", torch.zeros(1, width))

    def pooled(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """f = Σ_n softmax_n(K(P̃)·Q(q₀)/√W)·V(P̃)_n over P̃ = [P; null], width W (B, W)."""
        weights = mask.to(tokens.dtype).unsqueeze(-1)
        seed = (weights * tokens).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        extended = torch.cat([tokens, self.null.to(tokens.dtype).expand(tokens.shape[0], 1, -1)], dim=1)
        scores = torch.einsum("bnw,bw->bn", self.k_proj(extended), self.q_proj(seed)) / math.sqrt(self.width)
        return torch.einsum("bn,bnw->bw", scores.softmax(dim=-1), self.v_proj(extended))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """FG = normalize(f @ proj) with CLIP's frozen visual ``proj`` (W, E)."""
        return nn.functional.normalize(self.pooled(tokens, mask) @ proj.to(tokens.dtype), dim=-1)


def fuse_logits(cls: torch.Tensor, fg: torch.Tensor, classifier: torch.Tensor, ratio: float,
                scale: float = LOGIT_SCALE) -> torch.Tensor:
    """TokenFusion: scale·[ρ·CLS·Ŵᵀ + (1−ρ)·FG·Ŵᵀ] with Ŵ = row-normalised ``classifier`` (B, C)."""
    weights = nn.functional.normalize(classifier, dim=-1)
    return scale * (ratio * cls @ weights.T + (1.0 - ratio) * fg @ weights.T)


def crop_composite(crops: torch.Tensor, anchor: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """c̄ = normalize(Σ_k softmax_k(temperature·c_k·anchor)·c_k): crops (B, K, E), anchor (B, E), both normalised."""
    relevance = torch.einsum("bke,be->bk", crops, anchor)
    beta = (temperature * relevance).softmax(dim=-1)
    return nn.functional.normalize(torch.einsum("bk,bke->be", beta, crops), dim=-1)


def aggregate_knowledge(static: torch.Tensor, dynamic: torch.Tensor, gamma: float) -> torch.Tensor:
    """Dynamic Knowledge Aggregation: γ·s_static + (1−γ)·s_dynamic (a fixed convex mix, §3.4)."""
    return gamma * static + (1.0 - gamma) * dynamic


def fairness_loss(mean_probs: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """MUST's fairness term −(1/0.5)·mean_c log p̄_c, or with ``prior`` π the KL(p̄ ‖ π) variant (MC-P19)."""
    p = mean_probs.clamp_min(1e-8)
    if prior is None:
        return -2.0 * p.log().mean()
    return (p * (p.log() - prior.clamp_min(1e-8).log())).sum()


class RunningMean:
    """p̄ of §3.4: the batch mean on the first step of an epoch, then ½(p̄.detach() + batch mean)."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def reset(self) -> None:
        """Start a new epoch."""
        self.value = None

    def update(self, probs: torch.Tensor) -> torch.Tensor:
        """Fold a batch of probabilities (B, C) in; returns p̄ (C,) with gradient through this batch."""
        batch = probs.mean(dim=0)
        self.value = batch if self.value is None else 0.5 * (self.value.detach() + batch)
        return self.value


class MicroCLIPHead(AdaptedHead):
    """One attribute's adapted microCLIP model; satisfies ``classify.heads.Head`` (reads ``features.pixels``)."""

    method = "microclip"

    def __init__(self, attribute: Attribute, visual: AdaptedVisual, text: ClassText,
                 config: MicroCLIPConfig = MicroCLIPConfig(), logit_scale: float = LOGIT_SCALE):
        super().__init__(attribute, visual, text.prior.shape[0], config, logit_scale)
        self.soap = SOAP(visual.width, learnable_null=config.null_token == "learnable")
        self.classifier = nn.Parameter(text.cupl.clone().float())  # W*_LLM, initialised from the descriptions
        self.register_buffer("prior", text.prior.clone().float())  # W_LLM, frozen
        self.register_buffer("label_prior", torch.full((len(attribute.classes),), 1.0 / len(attribute.classes)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Visual LayerNorms, Q/K/V_proj (+ null token if learnable) and the learnable head."""
        return list(self.visual.parameters()) + list(self.soap.parameters()) + [self.classifier]

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS, FG), both normalised (B, E), from normalised pixels."""
        pooled, tokens = self.visual(pixels, with_tokens=True)
        mask = ncut_foreground(tokens, self.config.ncut_threshold, affinity=self.config.ncut_affinity)
        fg = self.soap(tokens, mask, self.visual.tower.proj)
        return nn.functional.normalize(pooled.float(), dim=-1), fg.float()

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Fused TokenFusion logits (B, C) of the student / prediction path."""
        cls, fg = self.encode(pixels)
        return fuse_logits(cls, fg, self.classifier, self.config.fusion_ratio, self.logit_scale)

    @torch.no_grad()
    def teacher_scores(self, weak: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """DKA scores s (B, C) from the weak view (B, 3, S, S) and its K crops (B, K, 3, S, S)."""
        cls, fg = self.encode(weak)
        fused = nn.functional.normalize(0.5 * cls + 0.5 * fg, dim=-1)
        dynamic = fused @ nn.functional.normalize(self.classifier, dim=-1).T
        b, k = crops.shape[:2]
        crop_cls, _ = self.visual(crops.flatten(0, 1), with_tokens=False)
        crop_cls = nn.functional.normalize(crop_cls.float(), dim=-1).view(b, k, -1)
        composite = crop_composite(crop_cls, cls, self.config.crop_temperature)
        return aggregate_knowledge(composite @ self.prior.T, dynamic, self.config.gamma)


def microclip_loss(head: MicroCLIPHead, weak: torch.Tensor, strong: torch.Tensor, crops: torch.Tensor,
                   running: RunningMean) -> tuple[torch.Tensor, dict]:
    """One self-training step's loss (§3.4): CE(student on strong, argmax DKA) + fairness term.

    Returns (loss, stats with the pseudo-labels and loss parts).
    """
    pseudo = head.teacher_scores(weak, crops).argmax(dim=-1)
    logits = head.logits(strong)
    ce = nn.functional.cross_entropy(logits, pseudo)
    mean_probs = running.update(logits.softmax(dim=-1))
    prior = head.label_prior if head.config.fairness == "prior" else None
    fair = fairness_loss(mean_probs, prior)
    loss = head.config.ce_weight * ce + head.config.fairness_weight * fair
    return loss, {"ce": float(ce.detach()), "fairness": float(fair.detach()), "pseudo_labels": pseudo.cpu()}


def build_microclip_head(backbone: Backbone, attribute: Attribute, config: MicroCLIPConfig = MicroCLIPConfig(),
                         text: ClassText | None = None) -> MicroCLIPHead:
    """A fresh microCLIP model for ``attribute`` on ``backbone`` (its device); text encoded once unless given."""
    require_patch_tokens(backbone, MicroCLIPHead.method)
    text = text or class_text(backbone, attribute)
    return MicroCLIPHead(attribute, AdaptedVisual(backbone.model.visual), text, config).to(backbone.device)


def head_from_checkpoint(sidecar: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> MicroCLIPHead:
    """Rebuild a saved microCLIP head on ``backbone`` from its sidecar and tensors (no text tower)."""
    from classify.schema import get_attribute

    classifier, prior = tensors["classifier"], tensors["prior"]
    empty = torch.zeros(prior.shape[0], 1, prior.shape[1])
    text = ClassText(prior, empty, torch.ones(prior.shape[0], 1, dtype=torch.bool), classifier, prior)
    head = MicroCLIPHead(get_attribute(sidecar["attribute"]), AdaptedVisual(backbone.model.visual), text,
                         MicroCLIPConfig(**sidecar["adapter"]))
    head.load_state_dict(tensors, strict=True)
    return head
