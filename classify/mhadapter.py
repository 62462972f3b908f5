"""CLIP-MHAdapter (methods.md §2): a 1.4 M-parameter head on the frozen backbone's patch tokens.

    tokens P (B, N, W) ──► Linear W→256 ─ ReLU ─ Linear 256→E ─ ReLU ─ LayerNorm(E)
                       ──► MultiheadAttention(E, heads) self-attention ─ Dropout(0.1) ─ mean over N ──► A(P)
    f = r·A(P) + (1−r)·g                      (g: the raw, unnormalised pooled CLIP embedding)
    logits = logit_scale · normalize(f) · normalize(t)ᵀ   (t: cached class-prompt embeddings, a buffer)

Widths come from the backbone (``Backbone.width`` = W, ``Backbone.embed_dim`` = E); only the
adapter is trainable. For ViT-B/16 (W=768, E=512) that is exactly 1,380,096 parameters for
any head count. ``MHAdapterHead`` satisfies the ``classify.heads.Head`` protocol, so it reads
the same ``ImageFeatures`` as the zero-shot heads and all attributes share one backbone pass.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from contracts.errors import CityAuditError
from classify.backbone import Backbone, ImageFeatures, require_patch_tokens
from classify.schema import Attribute

BOTTLENECK = 256  # a constant of the reference adapter


class AdapterConfigError(CityAuditError, ValueError):
    """Adapter hyperparameters that cannot build a valid head (e.g. E not divisible by heads)."""


@dataclass(frozen=True)
class AdapterConfig:
    """Declarative head hyperparameters: everything besides the backbone widths and the text side.

    ``blend`` is r in f = r·A(P) + (1−r)·g, strictly inside (0, 1). ``heads`` is the attention
    head count (must divide E). ``normalize_before_blend`` is the flagged variant of pitfall
    MHA-P5 (blend unit vectors); the default reproduces the reference (blend raw features).
    """

    heads: int = 8
    blend: float = 0.2
    dropout: float = 0.1
    bottleneck: int = BOTTLENECK
    normalize_before_blend: bool = False

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)


class MHAdapter(nn.Module):
    """The trainable adapter A: patch tokens (B, N, W) -> one vector per image (B, E)."""

    def __init__(self, width: int, embed_dim: int, heads: int = 8, dropout: float = 0.1,
                 bottleneck: int = BOTTLENECK):
        super().__init__()
        if embed_dim % heads:
            raise AdapterConfigError(f"embedding width {embed_dim} is not divisible by {heads} attention heads")
        self.mlp = nn.Sequential(nn.Linear(width, bottleneck), nn.ReLU(),
                                 nn.Linear(bottleneck, embed_dim), nn.ReLU())
        self.norm = nn.LayerNorm(embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """``self.attention(x, x, x)`` computed with ``scaled_dot_product_attention`` (B, N, E) -> (B, N, E).

        Same parameters and result as ``nn.MultiheadAttention`` (no attention dropout), but
        through the fused kernels: about 2x faster for small head widths on CPU.
        """
        attention, (batch, n, width) = self.attention, x.shape
        heads = attention.num_heads
        qkv = nn.functional.linear(x, attention.in_proj_weight, attention.in_proj_bias)
        q, k, v = qkv.view(batch, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return attention.out_proj(out.transpose(1, 2).reshape(batch, n, width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, W) -> adapted, mean-pooled features (B, E)."""
        x = self.norm(self.mlp(tokens))
        return self.dropout(self.self_attention(x)).mean(dim=1)


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` that require gradients."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def expected_parameter_count(width: int, embed_dim: int, bottleneck: int = BOTTLENECK) -> int:
    """The closed form of methods §2.2: (W·256+256) + (256·E+E) + 2E + (4E²+4E)."""
    return (width * bottleneck + bottleneck) + (bottleneck * embed_dim + embed_dim) + 2 * embed_dim \
        + (4 * embed_dim ** 2 + 4 * embed_dim)


class MHAdapterHead(nn.Module):
    """One attribute's CLIP-MHAdapter head: ``ImageFeatures`` -> logits (B, C) in fp32.

    ``text_embeddings`` (C, E) are the class-prompt embeddings, computed once and stored as a
    (normalised) buffer, so the text tower is never needed at forward time; ``logit_scale`` is
    the backbone's frozen exp(logit_scale).
    """

    method = "mhadapter"

    def __init__(self, attribute: Attribute, text_embeddings: torch.Tensor, logit_scale: float, width: int,
                 config: AdapterConfig = AdapterConfig()):
        super().__init__()
        if not 0.0 < config.blend < 1.0:
            raise AdapterConfigError(f"blend ratio r={config.blend} must lie strictly inside (0, 1)")
        if not 0.2 <= config.blend <= 0.8:
            warnings.warn(f"blend ratio r={config.blend} is outside the reference's range [0.2, 0.8]", stacklevel=2)
        if text_embeddings.shape[0] != len(attribute.classes):
            raise AdapterConfigError(f"{attribute.name}: {text_embeddings.shape[0]} text embeddings for "
                                     f"{len(attribute.classes)} classes")
        self.attribute = attribute
        self.config = config
        self.logit_scale = float(logit_scale)
        self.width, self.embed_dim = int(width), int(text_embeddings.shape[1])
        self.register_buffer("text_embeddings", nn.functional.normalize(text_embeddings.detach().float(), dim=-1))
        self.adapter = MHAdapter(self.width, self.embed_dim, config.heads, config.dropout, config.bottleneck)

    @property
    def head_id(self) -> str:
        """``mhadapter:<hash>``: a content hash of the adapter weights, prompts and blend settings."""
        digest = hashlib.sha256(repr(sorted(self.config.to_dict().items())).encode())
        digest.update("\n".join(self.attribute.prompts()).encode())
        for name, tensor in sorted(self.adapter.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return "mhadapter:" + digest.hexdigest()[:12]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Only the adapter's parameters: what the optimizer receives."""
        return list(self.adapter.parameters())

    def blended_features(self, features: ImageFeatures) -> torch.Tensor:
        """f = r·A(P) + (1−r)·g in fp32 (the adapter itself runs under bf16 autocast on CUDA)."""
        tokens = features.patch_tokens
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.is_cuda):
            adapted = self.adapter(tokens)
        adapted, pooled = adapted.float(), features.pooled.float()
        if self.config.normalize_before_blend:
            adapted, pooled = nn.functional.normalize(adapted, dim=-1), nn.functional.normalize(pooled, dim=-1)
        r = self.config.blend
        return r * adapted + (1.0 - r) * pooled

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        """Cosine logits × logit scale against the cached text embeddings, (B, C) fp32."""
        image = nn.functional.normalize(self.blended_features(features), dim=-1)
        return self.logit_scale * image @ self.text_embeddings.T


def build_mhadapter_head(backbone: Backbone, attribute: Attribute, config: AdapterConfig = AdapterConfig(),
                         text_embeddings: torch.Tensor | None = None) -> MHAdapterHead:
    """A freshly initialised head on ``backbone`` for ``attribute``, on the backbone's device.

    Widths come from the backbone; the prompts go through the text tower once unless
    ``text_embeddings`` (C, E) are given (e.g. from a checkpoint).
    """
    require_patch_tokens(backbone, MHAdapterHead.method)
    if text_embeddings is None:
        text_embeddings = backbone.encode_text(attribute.prompts())
    head = MHAdapterHead(attribute, text_embeddings.cpu(), backbone.logit_scale, backbone.width, config)
    return head.to(backbone.device)
