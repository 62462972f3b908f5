"""The backbone's image tower with its own (trainable) LayerNorms, shared frozen weights otherwise.

Both unsupervised adapters (microCLIP §3.2, FAIR-style §4.3) train the affine parameters of
every visual ``nn.LayerNorm`` (``ln_pre``, ``ln_1``/``ln_2`` of each block, ``ln_post``) and keep
all other weights frozen. ``AdaptedVisual`` owns only those LayerNorm parameters (2W·(2L+2)
numbers) and runs the backbone's frozen tower with them through ``torch.func.functional_call``,
so an adapted head stores kilobytes, not a copy of the encoder, and eight adapted attributes
share one set of frozen weights in memory.

Its forward returns the pooled CLIP embedding ``ln_post(CLS) @ proj`` and, on request, the
last-block **value-path** patch tokens of methods §1.3b (computed for the last block only,
pitfall MC-P7): the last block's attention is replaced by "each token attends to itself",
P = ln_post(z)[:, 1:], width W, not projected. That needs open_clip 3.3.0's
``ResidualAttentionBlock`` with ``nn.MultiheadAttention`` (``attn.in_proj_weight``);
``check_value_path_support`` refuses anything else (open_clip 4.x replaced that attention).
"""

from __future__ import annotations

import abc
import hashlib

import torch
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn
from torch.func import functional_call

from contracts.errors import CityAuditError


class AdaptationError(CityAuditError, ValueError):
    """Unsupervised adaptation cannot run: an unsupported backbone, no images, a bad option."""


PIXELS_NEEDED = ("an adapted head (microclip, fair) runs its own image tower and needs the batch pixels "
                 "(ImageFeatures.pixels, attached by classify.predict); it cannot score cached features: "
                 "compare it with `city-audit evaluate --adapted DIR` or `city-audit adapt --eval-data`")


def check_value_path_support(visual: nn.Module) -> None:
    """Raise ``AdaptationError`` unless ``visual`` is an open_clip ViT whose blocks expose the fused
    qkv projection of ``nn.MultiheadAttention`` and whose pooling is the plain CLS token."""
    if not isinstance(visual, VisionTransformer):
        raise AdaptationError(f"unsupervised adaptation needs an open_clip VisionTransformer, got {type(visual).__name__}")
    for index, block in enumerate(visual.transformer.resblocks):
        attention = getattr(block, "attn", None)
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(attention, nn.MultiheadAttention) \
                or getattr(attention, "in_proj_weight", None) is None or not attention.batch_first:
            raise AdaptationError(
                f"vision block {index} ({type(block).__name__}) has no nn.MultiheadAttention with a fused "
                f"in_proj_weight; the value path needs open_clip 3.3.0's ResidualAttentionBlock (pin open_clip_torch==3.3.0)")
    if visual.attn_pool is not None or visual.final_ln_after_pool or visual.proj is None \
            or getattr(visual, "pool_type", "tok") != "tok":
        raise AdaptationError("unsupervised adaptation needs CLS-token pooling with ln_post and proj (a CLIP ViT)")


def layer_norm_names(visual: nn.Module) -> list[str]:
    """Module names of every ``nn.LayerNorm`` in ``visual``, selected by type (not by name)."""
    return [name for name, module in visual.named_modules() if isinstance(module, nn.LayerNorm)]


def value_path(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The block with self-only attention (methods §1.3b): x (B, N+1, W) -> z (B, N+1, W).

    v = ln_1(x)·W_vᵀ + b_v (value slice of the fused qkv projection), u = x + ls_1(out_proj(v)),
    z = u + ls_2(mlp(ln_2(u))).
    """
    attention = block.attn
    width = attention.embed_dim
    weight, bias = attention.in_proj_weight[2 * width:], attention.in_proj_bias
    v = nn.functional.linear(block.ln_1(x), weight, None if bias is None else bias[2 * width:])
    u = x + block.ls_1(attention.out_proj(v))
    return u + block.ls_2(block.mlp(block.ln_2(u)))


class _Tower(nn.Module):
    """Registers the frozen tower as ``visual`` so ``functional_call`` can swap its LayerNorms."""

    def __init__(self, visual: VisionTransformer):
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor, with_tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        visual = self.visual
        x = visual._embeds(pixels)
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        y = blocks[-1](x)
        pooled, _ = visual._pool(y)
        pooled = pooled @ visual.proj
        tokens = visual.ln_post(value_path(blocks[-1], x))[:, 1:] if with_tokens else None
        return pooled, tokens


class AdaptedVisual(nn.Module):
    """Trainable copies of the visual LayerNorms over a frozen open_clip image tower.

    ``forward(pixels, with_tokens)`` -> (pooled (B, E) unnormalised, value-path tokens (B, N, W) or
    None). Parameter names are the LayerNorm module names with ``.`` replaced by ``__``.
    """

    def __init__(self, visual: VisionTransformer):
        super().__init__()
        check_value_path_support(visual)
        object.__setattr__(self, "_tower", _Tower(visual))  # not a submodule: never saved, never trained
        self._names = layer_norm_names(visual)
        modules = dict(visual.named_modules())
        self.norms = nn.ParameterDict()
        for name in self._names:
            for kind in ("weight", "bias"):
                tensor = getattr(modules[name], kind)
                self.norms[f"{name.replace('.', '__')}__{kind}"] = nn.Parameter(tensor.detach().clone().float())
        self.width = visual.transformer.width
        self.embed_dim = visual.output_dim
        self.n_blocks = len(visual.transformer.resblocks)

    @property
    def tower(self) -> VisionTransformer:
        """The shared frozen image tower."""
        return self._tower.visual

    def overrides(self) -> dict[str, torch.Tensor]:
        """``functional_call`` parameter overrides: ``visual.<ln name>.<weight|bias>`` -> our tensors."""
        out = {}
        for key, value in self.norms.items():
            name, kind = key.rsplit("__", 1)
            out[f"visual.{name.replace('__', '.')}.{kind}"] = value
        return out

    def forward(self, pixels: torch.Tensor, with_tokens: bool = True):
        """Run the tower with our LayerNorms on normalised pixels (B, 3, S, S)."""
        return functional_call(self._tower, self.overrides(), (pixels, with_tokens), strict=False)


def expected_layer_norm_count(width: int, n_blocks: int) -> int:
    """2W·(2L+2): weight and bias of ln_pre, ln_post and two LayerNorms per block (methods §3.2)."""
    return 2 * width * (2 * n_blocks + 2)


LOGIT_SCALE = 100.0  # the reference's fixed scale for the student logits


class AdaptedHead(nn.Module, abc.ABC):
    """What the microCLIP and FAIR-style heads share: one attribute, its adapted image tower, the
    method's settings, and the ``classify.heads.Head`` protocol over ``features.pixels``.

    Subclasses set ``method`` and implement ``logits(pixels) -> (B, C)``.
    """

    method: str
    needs_pixels = True

    def __init__(self, attribute, visual: AdaptedVisual, n_text_classes: int, config,
                 logit_scale: float = LOGIT_SCALE):
        super().__init__()
        if n_text_classes != len(attribute.classes):
            raise AdaptationError(f"{attribute.name}: text for {n_text_classes} classes, schema has "
                                  f"{len(attribute.classes)}")
        self.attribute, self.config, self.logit_scale = attribute, config, float(logit_scale)
        self.visual = visual

    @property
    def head_id(self) -> str:
        """``<method>:<hash>`` of the weights and settings."""
        digest = hashlib.sha256(repr(sorted(self.config.to_dict().items())).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return f"{self.method}:{digest.hexdigest()[:12]}"

    @abc.abstractmethod
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Prediction logits (B, C) from normalised pixels (B, 3, S, S)."""

    def forward(self, features) -> torch.Tensor:
        """Prediction logits (B, C) from ``features.pixels`` (test transform, no crops)."""
        if features.pixels is None:
            raise AdaptationError(PIXELS_NEEDED)
        return self.logits(features.pixels.to(next(self.parameters()).device)).float()
