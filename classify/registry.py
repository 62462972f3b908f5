"""What classify can build, by name: backbones and head methods. Imports neither torch nor open_clip.

``BACKBONES`` lists the curated frozen CLIP backbones (``city-audit models``; built by
``classify.backbone.load_backbone``), each with the image tower's shape, the MHAdapter parameter
count and the expected cost; any other open_clip model is reachable as ``ARCH/PRETRAINED``
(``resolve_spec``, which imports open_clip only for such names).
``HEAD_METHODS`` lists the head methods, each saying how to rebuild its heads from a checkpoint
and, for the unsupervised ones, how to adapt them. The command line's choices, checkpoint
loading and the docs read these registries, and ``check_*`` validate a run's model options in
milliseconds, before any model is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from classify.schema import ATTRIBUTES
from contracts.errors import CityAuditError
from contracts.registry import Registry

WEIGHTS_ENV = "CITY_AUDIT_WEIGHTS"
BOTTLENECK = 256  # the MHAdapter bottleneck (classify.mhadapter.BOTTLENECK)
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"  # the project's own open_clip configs (tiny)


class ModelNameError(CityAuditError, ValueError):
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
BACKBONES: Registry[BackboneSpec] = Registry("backbone", ModelNameError)
for _spec in (
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
):
    BACKBONES.register(_spec.name, _spec)


def _shape_from_config(arch: str) -> dict:
    """Image-tower shape fields from open_clip's model config; empty for non-ViT towers."""
    import open_clip

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
    import open_clip  # only for names outside the registry

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


@dataclass(frozen=True)
class HeadMethod:
    """A head method: how its checkpoints are rebuilt and, when unsupervised, how it adapts.

    ``from_checkpoint()`` returns the builder ``(sidecar, tensors, backbone) -> head``;
    ``adaptation()`` returns the ``classify.adapt.AdaptMethod`` (None for supervised or
    zero-shot heads). Both import their module on first use.
    """

    name: str
    display_name: str
    from_checkpoint: Callable[[], Callable] | None = None
    adaptation: Callable[[], object] | None = None

    @property
    def adapts(self) -> bool:
        return self.adaptation is not None


def _mhadapter_builder():
    from classify.checkpoints import build_mhadapter

    return build_mhadapter


def _microclip_builder():
    from classify.microclip import head_from_checkpoint

    return head_from_checkpoint


def _fair_builder():
    from classify.fair import head_from_checkpoint

    return head_from_checkpoint


def _adaptation(name: str):
    def load():
        from classify.adapt import adaptation_method

        return adaptation_method(name)

    return load


HEAD_METHODS: Registry[HeadMethod] = Registry("head method")
for _method in (
    HeadMethod("zeroshot", "zero-shot"),
    HeadMethod("mhadapter", "CLIP-MHAdapter", _mhadapter_builder),
    HeadMethod("microclip", "microCLIP", _microclip_builder, _adaptation("microclip")),
    HeadMethod("fair", "FAIR-style (reconstructed)", _fair_builder, _adaptation("fair")),
):
    HEAD_METHODS.register(_method.name, _method)


def adaptation_methods() -> list[str]:
    """Names of the unsupervised adaptation methods (``--adapt`` choices)."""
    return [m.name for m in HEAD_METHODS.values() if m.adapts]


def open_clip_architectures() -> set[str]:
    """The architectures open_clip knows (its model config files and the project's), found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    return {f.stem for folder in [*folders, MODEL_CONFIG_DIR] if folder.is_dir() for f in folder.glob("*.json")}


def check_model_name(model: str) -> str:
    """``model`` if it names a registered backbone or an open_clip architecture (``ARCH`` or ``ARCH/PRETRAINED``);
    ``ModelNameError`` saying what is valid otherwise. The pretrained tag is checked when loading."""
    if model not in BACKBONES and model.partition("/")[0] not in open_clip_architectures():
        raise ModelNameError(f"unknown model {model!r}; choose from {', '.join(BACKBONES)} (city-audit models) "
                             f"or an open_clip ARCH/PRETRAINED pair such as ViT-B-16/dfn2b")
    return model


def check_backbone(model: str, weights: str | None = None) -> str:
    """``check_model_name``, and a bare ``ARCH`` (no pretrained tag) only with a local ``weights`` file."""
    check_model_name(model)
    arch, _, tag = model.partition("/")
    if model not in BACKBONES and not tag and not weights:
        raise ModelNameError(f"--model {arch} names an architecture without weights; add a pretrained tag "
                             f"({arch}/TAG) or pass a local file with --weights")
    return model


def check_weights(weights: str | os.PathLike | None) -> Path | None:
    """``weights`` (or ``$CITY_AUDIT_WEIGHTS``) as an existing file, None when neither is set."""
    weights = weights or os.environ.get(WEIGHTS_ENV) or None
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CityAuditError(f"weights file {str(path)!r} does not exist; pass the path of a local checkpoint "
                             f"with --weights (or unset {WEIGHTS_ENV})")
    return path


def check_heads_folder(heads: str | os.PathLike, model: str) -> dict[str, str]:
    """The head checkpoints of folder ``heads`` as ``{attribute: method}``, checked without loading them.

    Refuses a missing folder, a folder without any ``<attribute>.json`` checkpoint, unreadable
    sidecars, unknown methods and checkpoints made for another backbone than ``model``.
    """
    folder = Path(heads).expanduser()
    if not folder.is_dir():
        raise CityAuditError(f"heads folder {str(folder)!r} does not exist; pass the folder that "
                             f"`city-audit train` or `city-audit adapt` wrote")
    found = {}
    for name in ATTRIBUTES:
        sidecar = folder / f"{name}.json"
        if not sidecar.is_file():
            continue
        try:
            info = json.loads(sidecar.read_text())
            method, made_for = info["method"], info["backbone"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CityAuditError(f"{sidecar}: not a readable city-audit head checkpoint; retrain it or remove it") from None
        HEAD_METHODS.get(method)
        if made_for != model:
            raise CityAuditError(f"{sidecar}: made for backbone {made_for!r}, but this run uses --model {model}; "
                                 f"pass --model {made_for} or retrain the head on {model}")
        found[name] = method
    if not found:
        raise CityAuditError(f"heads folder {str(folder)!r} has no head checkpoints (<attribute>.json + "
                             f".safetensors); train some with `city-audit train`")
    return found
