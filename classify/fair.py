"""FAIR-style (reconstructed) unsupervised adaptation (methods §4).

FAIR's code and method section are not public; this is the labelled reconstruction of methods
§4.3-4.5, consistent with its abstract, a survey quote and the authors' code lineage (MUST → DPA
→ FAIR → microCLIP). Every equation here is inferred; do not compare its numbers with the paper's
as a reproduction. Keep this module isolated so it can be replaced if the real code appears.

* **Class Description Anchors** A (C, M, E): trainable, initialised with the normalised
  description embeddings e_{c,m}; padded slots masked. Per-class weights
  β_{c,m} = softmax_m(τ_t·cos(A_{c,m}, h_c)) against the fixed handcrafted embedding h_c, class
  anchor Ā_c = normalize(Σ_m β_{c,m} A_{c,m}).
* **Learned Alignment Score** over localized features: K random crops' CLS v_k, relevance
  ρ_k = cos(v_k, v) to the full view, keep the top-k, α = softmax(τ_v·ρ) over them;
  LAS(x, c) = ṽ·Ā_c with ṽ = normalize(Σ α_k v_k) (factorised, default) or
  Σ_k α_k Σ_m β_{c,m} cos(v_k, A_{c,m}) (``las_form="double_sum"``).
* **Self-training with ambiguity weights**: ŷ = argmax of γ·q_LAS + (1−γ)·q_CLS (γ = 1: LAS only);
  per-sample weight w = q_CLS[ŷ]/max_c q_CLS (``agreement``, DPA-style) or 1 − q₍₂₎/q₍₁₎
  (``margin``); loss = mean_b w_b·CE(κ·cos(v_strong, Ā), ŷ) + λ·fairness (MUST's term, §3.4).

Trainables: the visual LayerNorms and A. Prediction (§4.5), chosen by ``predict_with``: ``cls``
(default, the cheap path) argmax κ·cos(CLS, Ā), one image-tower pass with the adapted LayerNorms;
``las`` argmax κ·LAS over ``predict_crops`` fixed crops and the full view, (K+1)x the cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from classify.adapted_visual import LOGIT_SCALE, PIXELS_NEEDED, AdaptationError, AdaptedHead, AdaptedVisual
from classify.backbone import Backbone, require_patch_tokens
from classify.descriptions import ClassText, class_text
from classify.microclip import RunningMean, fairness_loss
from classify.schema import Attribute



@dataclass(frozen=True)
class FairConfig:
    """FAIR-style (reconstructed) settings; every default is our inference (methods §4.3-4.4)."""

    top_k: int = 4  # crops kept by relevance to the full view (survey: "top-k selected")
    crop_temperature: float = math.exp(4.0)  # τ_v, WCA's image scale
    description_temperature: float = math.exp(2.0)  # τ_t, WCA's text scale
    las_form: str = "factorised"  # factorised | double_sum
    gamma: float = 1.0  # weight of q_LAS against q_CLS in the pseudo-label
    weighting: str = "agreement"  # agreement (DPA lineage) | margin | none
    fairness_weight: float = 1.0
    predict_with: str = "cls"  # cls: one pass, argmax κ·cos(CLS, Ā) | las: κ·LAS over fixed crops, (K+1)x cost
    predict_crops: int = 8  # K for the LAS prediction path

    def __post_init__(self):
        if self.las_form not in ("factorised", "double_sum"):
            raise AdaptationError(f"las_form must be factorised or double_sum, got {self.las_form!r}")
        if self.weighting not in AMBIGUITY_WEIGHTS:
            raise AdaptationError(f"weighting must be one of {list(AMBIGUITY_WEIGHTS)}, got {self.weighting!r}")
        if self.top_k < 1:
            raise AdaptationError("top_k must be at least 1")
        if not 0.0 <= self.gamma <= 1.0:
            raise AdaptationError("gamma must lie in [0, 1]")
        if self.predict_with not in ("cls", "las"):
            raise AdaptationError(f"predict_with must be cls or las, got {self.predict_with!r}")
        if self.predict_crops < 1:
            raise AdaptationError("predict_crops must be at least 1")

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)


def anchor_weights(anchors: torch.Tensor, mask: torch.Tensor, handcrafted: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """β (C, M) = softmax_m(τ_t·cos(A_{c,m}, h_c)) over the real (unmasked) descriptions."""
    cos = torch.einsum("cme,ce->cm", nn.functional.normalize(anchors, dim=-1), handcrafted)
    return (temperature * cos).masked_fill(~mask, float("-inf")).softmax(dim=-1)


def select_crops(crops: torch.Tensor, full: torch.Tensor, top_k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop weights α (B, K) (zero outside the top-k by cos(v_k, v)) and ṽ = normalize(Σ α_k v_k) (B, E)."""
    relevance = torch.einsum("bke,be->bk", crops, full)
    k = min(top_k, crops.shape[1])
    kept = torch.zeros_like(relevance, dtype=torch.bool).scatter(1, relevance.topk(k, dim=-1).indices, True)
    alpha = (temperature * relevance).masked_fill(~kept, float("-inf")).softmax(dim=-1)
    return alpha, nn.functional.normalize(torch.einsum("bk,bke->be", alpha, crops), dim=-1)


def _agreement(q_las: torch.Tensor, q_cls: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    return q_cls.gather(1, pseudo[:, None]).squeeze(1) / q_cls.max(dim=-1).values


def _margin(q_las: torch.Tensor, q_cls: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    top2 = q_las.topk(2, dim=-1).values
    return 1.0 - top2[:, 1] / top2[:, 0]


#: ambiguity weighting name -> (q_LAS, q_CLS, pseudo-labels) -> per-sample weight in [0, 1]
AMBIGUITY_WEIGHTS = {
    "agreement": _agreement,
    "margin": _margin,
    "none": lambda q_las, q_cls, pseudo: torch.ones_like(pseudo, dtype=q_las.dtype),
}


class FairHead(AdaptedHead):
    """One attribute's FAIR-style (reconstructed) model; a ``Head`` that reads ``features.pixels``."""

    method = "fair"

    def __init__(self, attribute: Attribute, visual: AdaptedVisual, text: ClassText,
                 config: FairConfig = FairConfig(), logit_scale: float = LOGIT_SCALE):
        super().__init__(attribute, visual, text.descriptions.shape[0], config, logit_scale)
        self.anchors = nn.Parameter(text.descriptions.clone().float())  # CDA, (C, M, E)
        self.register_buffer("anchor_mask", text.mask.clone())
        self.register_buffer("handcrafted", text.handcrafted.clone().float())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Visual LayerNorms and the class description anchors."""
        return list(self.visual.parameters()) + [self.anchors]

    def class_anchors(self) -> torch.Tensor:
        """Ā (C, E) = normalize(Σ_m β_{c,m} A_{c,m})."""
        beta = anchor_weights(self.anchors, self.anchor_mask, self.handcrafted, self.config.description_temperature)
        return nn.functional.normalize(torch.einsum("cm,cme->ce", beta, self.anchors), dim=-1)

    def encode_cls(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised CLS embeddings (B, E) through the adapted LayerNorms."""
        pooled, _ = self.visual(pixels, with_tokens=False)
        return nn.functional.normalize(pooled.float(), dim=-1)

    def alignment_score(self, crops: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        """LAS (B, C) from normalised crop CLS features (B, K, E) and the full view's CLS (B, E)."""
        alpha, pooled = select_crops(crops, full, self.config.top_k, self.config.crop_temperature)
        if self.config.las_form == "factorised":
            return pooled @ self.class_anchors().T
        beta = anchor_weights(self.anchors, self.anchor_mask, self.handcrafted, self.config.description_temperature)
        cos = torch.einsum("bke,cme->bkcm", crops, nn.functional.normalize(self.anchors, dim=-1))
        return torch.einsum("bk,cm,bkcm->bc", alpha, beta, cos)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """κ·cos(CLS, Ā) (B, C): the student and the cheap prediction path."""
        return self.logit_scale * self.encode_cls(pixels) @ self.class_anchors().T

    @property
    def prediction_path(self) -> str:
        """Which §4.5 path ``forward`` uses: ``cls`` (one pass) or ``las`` (K fixed crops + the full view)."""
        return self.config.predict_with

    def las_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """κ·LAS (B, C) over ``predict_crops`` fixed crops of each preprocessed image plus the full view:
        the crop-scoring prediction path of methods §4.5, (K+1)x the image-tower cost."""
        crops = fixed_crops(pixels, self.config.predict_crops)
        b, k = crops.shape[:2]
        full = self.encode_cls(pixels)
        crop_cls = self.encode_cls(crops.flatten(0, 1)).view(b, k, -1)
        return self.logit_scale * self.alignment_score(crop_cls, full)

    def forward(self, features) -> torch.Tensor:
        """Prediction logits (B, C) from ``features.pixels`` by the configured path (``prediction_path``)."""
        if self.config.predict_with == "cls":
            return super().forward(features)
        if features.pixels is None:
            raise AdaptationError(PIXELS_NEEDED)
        return self.las_logits(features.pixels.to(next(self.parameters()).device)).float()

    @torch.no_grad()
    def teacher(self, weak: torch.Tensor, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pseudo-labels (B,), ambiguity weights (B,)) from the weak view and its crops (B, K, 3, S, S)."""
        full = self.encode_cls(weak)
        b, k = crops.shape[:2]
        crop_cls = self.encode_cls(crops.flatten(0, 1)).view(b, k, -1)
        q_las = (self.logit_scale * self.alignment_score(crop_cls, full)).softmax(dim=-1)
        q_cls = (self.logit_scale * full @ self.class_anchors().T).softmax(dim=-1)
        mixed = self.config.gamma * q_las + (1.0 - self.config.gamma) * q_cls
        pseudo = mixed.argmax(dim=-1)
        return pseudo, AMBIGUITY_WEIGHTS[self.config.weighting](mixed, q_cls, pseudo)


def fixed_crops(pixels: torch.Tensor, k: int, seed: int = 0, scale: tuple[float, float] = (0.5, 0.9)) -> torch.Tensor:
    """K square crops (B, K, 3, S, S) of preprocessed pixels (B, 3, S, S), resized back to S (bicubic).

    Side U(0.5, 0.9)·S and position drawn once from ``seed``, the same boxes for every image: the
    training crops' distribution (WCA/microCLIP), but deterministic, so predictions repeat."""
    size = pixels.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        side = max(1, round(size * float(torch.empty(1).uniform_(*scale, generator=generator))))
        top = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        crop = pixels[..., top:top + side, left:left + side]
        out.append(nn.functional.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False,
                                             antialias=True))
    return torch.stack(out, dim=1)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_b w_b·CE(logits_b, y_b)."""
    return (weights * nn.functional.cross_entropy(logits, targets, reduction="none")).mean()


def fair_loss(head: FairHead, weak: torch.Tensor, strong: torch.Tensor, crops: torch.Tensor,
              running: RunningMean) -> tuple[torch.Tensor, dict]:
    """One self-training step's loss: ambiguity-weighted CE on the strong view + the fairness term."""
    pseudo, weights = head.teacher(weak, crops)
    logits = head.logits(strong)
    ce = weighted_cross_entropy(logits, pseudo, weights)
    fair = fairness_loss(running.update(logits.softmax(dim=-1)))
    loss = ce + head.config.fairness_weight * fair
    return loss, {"ce": float(ce.detach()), "fairness": float(fair.detach()), "pseudo_labels": pseudo.cpu(),
                  "mean_weight": float(weights.mean())}


def build_fair_head(backbone: Backbone, attribute: Attribute, config: FairConfig = FairConfig(),
                    text: ClassText | None = None) -> FairHead:
    """A fresh FAIR-style model for ``attribute`` on ``backbone`` (its device); text encoded once unless given."""
    require_patch_tokens(backbone, FairHead.method)
    text = text or class_text(backbone, attribute)
    return FairHead(attribute, AdaptedVisual(backbone.model.visual), text, config).to(backbone.device)


def head_from_checkpoint(sidecar: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> FairHead:
    """Rebuild a saved FAIR-style head on ``backbone`` from its sidecar and tensors (no text tower)."""
    from classify.schema import get_attribute

    anchors, mask, handcrafted = tensors["anchors"], tensors["anchor_mask"], tensors["handcrafted"]
    text = ClassText(handcrafted, anchors, mask, handcrafted, handcrafted)
    head = FairHead(get_attribute(sidecar["attribute"]), AdaptedVisual(backbone.model.visual), text,
                    FairConfig(**sidecar["adapter"]))
    head.load_state_dict(tensors, strict=True)
    return head
