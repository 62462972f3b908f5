"""Which open_clip backbones city-audit knows, what they cost, and how any other one is named.

``BACKBONES`` is the curated registry (``city-audit models`` prints it): each entry names an
open_clip architecture and pretrained tag and records the image tower's shape (image size, patch
size, width W, blocks L, joint embedding E). The MHAdapter parameter count and the expected cost
are derived from those numbers (``BackboneSpec.mhadapter_parameters``, ``.image_gmacs``,
``.head_gmacs``), and ``tests/test_model_registry.py`` builds every curated architecture with
random weights on the meta device to check the recorded shapes against open_clip's own modules.

Any other open_clip model is reachable as ``ARCH/PRETRAINED`` (``ViT-B-16/dfn2b``) or, with a
local ``--weights`` file, as a bare ``ARCH``: ``resolve_spec`` validates both against open_clip's
lists and picks the QuickGELU variant when the pretrained tag asks for it (OpenAI weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip

BOTTLENECK = 256  # the MHAdapter bottleneck (classify.mhadapter.BOTTLENECK; kept here to avoid an import cycle)


class ModelNameError(ValueError):
    """``--model`` names neither a registry entry nor a valid open_clip ``ARCH/PRETRAINED`` pair."""


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: open_clip architecture, weights tag and (where known) the image tower's shape.

    ``pretrained`` None means seeded random weights (``tiny``) unless ``--weights`` is given.
    Shape fields are None for towers that are not open_clip ViTs (ResNet, timm): those give no
    patch tokens, so only zero-shot heads run on them.
    """

    name: str
    open_clip_name: str
    pretrained: str | None
    summary: str
    image_size: int | None = None
    patch_size: int | None = None
    width: int | None = None
    layers: int | None = None
    embed_dim: int | None = None
    mlp_ratio: float = 4.0

    @property
    def tokens(self) -> int | None:
        """Patch tokens N = (image size / patch size)², CLS excluded."""
        if self.image_size is None or self.patch_size is None:
            return None
        return (self.image_size // self.patch_size) ** 2

    @property
    def mhadapter_parameters(self) -> int | None:
        """Trainable parameters of one CLIP-MHAdapter head on this backbone (methods §2.2)."""
        if self.width is None or self.embed_dim is None:
            return None
        w, e, b = self.width, self.embed_dim, BOTTLENECK
        return (w * b + b) + (b * e + e) + 2 * e + (4 * e * e + 4 * e)

    @property
    def image_gmacs(self) -> float | None:
        """Multiply-accumulates (10⁹) of one image through the tower: patch embedding, L blocks
        (qkv + out projections, attention, MLP), projection. Ignores norms and activations."""
        if None in (self.tokens, self.width, self.layers, self.embed_dim):
            return None
        n, w = self.tokens + 1, self.width
        patch = self.tokens * 3 * self.patch_size ** 2 * w
        block = n * 4 * w * w + 2 * n * n * w + n * 2 * self.mlp_ratio * w * w
        return (patch + self.layers * block + w * self.embed_dim) / 1e9

    @property
    def head_gmacs(self) -> float | None:
        """Multiply-accumulates (10⁹) of one MHAdapter head per image as the fused pass runs it
        (classify.fused): W→256→E MLP and the q, k projections on N tokens, the N×N scores, and the
        value and output projections once on the token mean."""
        if None in (self.tokens, self.width, self.embed_dim):
            return None
        n, w, e = self.tokens, self.width, self.embed_dim
        return (n * (w * BOTTLENECK + BOTTLENECK * e + 2 * e * e) + n * n * e + 2 * e * e) / 1e9

    def describe(self) -> str:
        """One line for ``city-audit models``."""
        source = f"{self.open_clip_name}/{self.pretrained or 'random'}"
        if self.width is None:
            return f"{self.name:18} {source:44} no patch tokens: zero-shot only. {self.summary}"
        eight = 8 * self.head_gmacs / self.image_gmacs
        return (f"{self.name:18} {source:44} {self.image_size}px/{self.patch_size} N={self.tokens:<3} "
                f"W={self.width:<4} E={self.embed_dim:<3} L={self.layers:<2} MHAdapter {self.mhadapter_parameters:>9,} "
                f"params  {self.image_gmacs:6.1f} GMAC/img, 8 heads +{eight:.0%}  {self.summary}")


def _vit(name: str, open_clip_name: str, pretrained: str | None, summary: str, size: int, patch: int,
         width: int, layers: int, embed: int) -> BackboneSpec:
    return BackboneSpec(name, open_clip_name, pretrained, summary, size, patch, width, layers, embed)


#: The curated backbones, in the order ``city-audit models`` lists them.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _vit("vit-b16", "ViT-B-16-quickgelu", "openai",
             "CLIP ViT-B/16, OpenAI weights (the CLIP-MHAdapter paper's backbone)", 224, 16, 768, 12, 512),
        _vit("tiny", "city-audit-tiny", None,
             "3-block ViT with seeded random weights: offline tests and demos only, untrained", 224, 16, 128, 3, 64),
        _vit("vit-b32", "ViT-B-32-quickgelu", "openai",
             "CLIP ViT-B/32, OpenAI weights: about 4x cheaper than B/16, less accurate", 224, 32, 768, 12, 512),
        _vit("vit-l14", "ViT-L-14-quickgelu", "openai",
             "CLIP ViT-L/14, OpenAI weights: the most accurate OpenAI CLIP, about 4.5x B/16's cost", 224, 14, 1024, 24, 768),
        _vit("vit-b16-laion", "ViT-B-16", "laion2b_s34b_b88k",
             "OpenCLIP ViT-B/16 trained on LAION-2B", 224, 16, 768, 12, 512),
        _vit("vit-b16-datacomp", "ViT-B-16", "datacomp_xl_s13b_b90k",
             "OpenCLIP ViT-B/16 trained on DataComp-XL", 224, 16, 768, 12, 512),
        _vit("vit-l14-datacomp", "ViT-L-14", "datacomp_xl_s13b_b90k",
             "OpenCLIP ViT-L/14 trained on DataComp-XL", 224, 14, 1024, 24, 768),
    )
}


def _shape_from_config(arch: str) -> dict:
    """Image-tower shape fields from open_clip's model config; empty for non-ViT towers."""
    config = open_clip.get_model_config(arch) or {}
    vision = config.get("vision_cfg", {})
    if "timm_model_name" in vision or not isinstance(vision.get("layers"), int):
        return {}
    return {"image_size": vision.get("image_size", 224), "patch_size": vision.get("patch_size", 16),
            "width": vision.get("width", 768), "layers": vision["layers"], "embed_dim": config.get("embed_dim"),
            "mlp_ratio": vision.get("mlp_ratio", 4.0)}


def resolve_spec(model: str, weights: str | None = None) -> BackboneSpec:
    """The spec for ``--model``: a registry name, ``ARCH/PRETRAINED``, or a bare ``ARCH`` when
    ``weights`` (a local file) is given. Raises ``ModelNameError`` saying what is valid."""
    if model in BACKBONES:
        return BACKBONES[model]
    arch, _, tag = model.partition("/")
    known = open_clip.list_models()
    if arch not in known:
        raise ModelNameError(f"unknown model {model!r}; choose from {', '.join(BACKBONES)} "
                             f"(city-audit models) or an open_clip ARCH/PRETRAINED pair such as ViT-B-16/dfn2b")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tag:
        if weights is None:
            raise ModelNameError(f"--model {arch} names an architecture without weights; add a pretrained tag "
                                 f"({arch}/{tags[0] if tags else 'TAG'}; known: {', '.join(tags) or 'none'}) "
                                 f"or pass a local file with --weights")
        return BackboneSpec(model, arch, None, "open_clip architecture with local weights", **_shape_from_config(arch))
    if tag not in tags and weights is None:
        raise ModelNameError(f"open_clip has no pretrained tag {tag!r} for {arch}; known: {', '.join(tags) or 'none'}")
    open_clip_name = arch
    if tag in tags and (open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu") \
            and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in known:
        open_clip_name = f"{arch}-quickgelu"  # these weights were trained with QuickGELU (methods §1.2)
    return BackboneSpec(model, open_clip_name, tag, "open_clip pretrained pair", **_shape_from_config(arch))
