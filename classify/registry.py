"""What classify can build, by name: backbones and head methods. Imports neither torch nor open_clip.

``BACKBONES`` lists the frozen CLIP backbones (``classify.backbone.load_backbone`` builds them);
``HEAD_METHODS`` lists the head methods, each saying how to rebuild its heads from a checkpoint
and, for the unsupervised ones, how to adapt them. The command line's choices, checkpoint
loading and the docs read these registries, and ``check_*`` validate a run's model options in
milliseconds, before any model is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from classify.schema import ATTRIBUTES
from contracts.errors import CityAuditError
from contracts.registry import Registry

WEIGHTS_ENV = "CITY_AUDIT_WEIGHTS"


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: which open_clip architecture and where its weights come from."""

    name: str
    open_clip_name: str
    pretrained: str | None  # open_clip pretrained tag; None means seeded random weights
    summary: str


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
for _spec in (
    BackboneSpec("vit-b16", "ViT-B-16-quickgelu", "openai",
                 "CLIP ViT-B/16, OpenAI weights (the CLIP-MHAdapter paper's backbone)"),
    BackboneSpec("tiny", "city-audit-tiny", None,
                 "3-block ViT with seeded random weights: offline tests and demos only, untrained"),
):
    BACKBONES.register(_spec.name, _spec)


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


def check_backbone(model: str) -> BackboneSpec:
    """The spec of backbone ``model``; ``UnknownNameError`` listing the registered names otherwise."""
    return BACKBONES.get(model)


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
