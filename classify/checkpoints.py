"""Head checkpoints: safetensors tensors + a JSON sidecar, never pickle.

A trained head is two files in one folder, named after its attribute::

    <dir>/<attribute>.safetensors   adapter weights and the cached text embeddings
    <dir>/<attribute>.json          format, method, backbone (name, weights sha256, widths), attribute,
                                    classes, prompts, adapter config, training hyperparameters,
                                    validation metrics, sha256 of the .safetensors file

``load_head`` refuses a checkpoint made for another backbone or another class list, and a
file whose bytes do not match the sidecar, with ``CheckpointError``. ``load_head_bundle``
loads every head of a folder (what ``--heads DIR`` points at). Training state for resuming
(optimizer moments, best weights, epoch) is stored the same way by ``save_train_state``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contracts.files import write_atomic
from contracts.errors import CityAuditError
from classify.backbone import Backbone, require_patch_tokens
from classify.heads import zero_shot_heads
from classify.mhadapter import AdapterConfig, MHAdapterHead
from classify.registry import HEAD_METHODS
from classify.schema import ATTRIBUTES, get_attribute

FORMAT = "city-audit-head/1"
TRAIN_STATE_FORMAT = "city-audit-train-state/1"


class CheckpointError(CityAuditError, ValueError):
    """A checkpoint that cannot be used here: unreadable, corrupt, or made for another backbone/class list."""


def _sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def backbone_identity(backbone: Backbone) -> dict:
    """What a checkpoint records about the backbone it was trained on."""
    return {"name": backbone.spec.name, "open_clip_name": backbone.spec.open_clip_name,
            "weights_sha256": backbone.weights_sha256, "model_id": backbone.model_id,
            "width": backbone.width, "embed_dim": backbone.embed_dim, "trained": backbone.trained,
            "weights_source": backbone.weights_source, "weights_file_sha256": backbone.weights_file_sha256,
            "weights_verified": backbone.weights_verified}


def head_paths(directory: str | Path, attribute: str) -> tuple[Path, Path]:
    """(tensors, sidecar) paths of ``attribute``'s head inside ``directory``."""
    directory = Path(directory)
    return directory / f"{attribute}.safetensors", directory / f"{attribute}.json"


def save_head(head: MHAdapterHead, directory: str | Path, backbone: Backbone, *,
              hyperparameters: dict | None = None, metrics: dict | None = None) -> Path:
    """Write ``head`` as ``<dir>/<attribute>.safetensors`` + ``.json``; returns the sidecar path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors_path, sidecar_path = head_paths(directory, head.attribute.name)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    write_atomic(tensors_path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    sidecar = {
        "format": FORMAT,
        "method": head.method,
        "head_id": head.head_id,
        "backbone": backbone_identity(backbone),
        "attribute": head.attribute.name,
        "classes": list(head.attribute.classes),
        "prompts": head.attribute.prompts(),
        "logit_scale": head.logit_scale,
        "adapter": head.config.to_dict(),
        "hyperparameters": hyperparameters or {},
        "metrics": metrics or {},
        "tensors_sha256": _sha256_file(tensors_path),
    }
    write_atomic(sidecar_path, lambda p: p.write_text(json.dumps(sidecar, indent=2, default=str)))
    return sidecar_path


def read_sidecar(path: str | Path) -> dict:
    """Parse a sidecar JSON, with ``CheckpointError`` for a missing or malformed file."""
    path = Path(path)
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint sidecar {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a city-audit head checkpoint (format {FORMAT!r} expected)")
    return sidecar


def _check_compatible(sidecar: dict, backbone: Backbone, path: Path) -> None:
    made_for = sidecar.get("backbone", {})
    here = backbone_identity(backbone)
    for key in ("name", "weights_sha256"):
        if made_for.get(key) != here[key]:
            raise CheckpointError(
                f"{path}: made for backbone {made_for.get('name')!r} (weights {str(made_for.get('weights_sha256'))[:12]}), "
                f"but the loaded backbone is {here['name']!r} (weights {here['weights_sha256'][:12]}); "
                f"retrain the head on this backbone or load the backbone it was trained on")
    attribute = get_attribute(sidecar.get("attribute", ""))
    if sidecar.get("classes") != list(attribute.classes):
        raise CheckpointError(f"{path}: class list {sidecar.get('classes')} differs from the {attribute.name} "
                              f"schema {list(attribute.classes)}; retrain the head")
    if sidecar.get("prompts") != attribute.prompts():
        raise CheckpointError(f"{path}: prompts {sidecar.get('prompts')} differ from the schema's "
                              f"{attribute.prompts()}; retrain the head")


def build_mhadapter(sidecar: dict, tensors: dict[str, torch.Tensor], backbone: Backbone) -> MHAdapterHead:
    head = MHAdapterHead(get_attribute(sidecar["attribute"]), tensors["text_embeddings"], backbone.logit_scale,
                         backbone.width, AdapterConfig(**sidecar["adapter"]))
    head.load_state_dict(tensors, strict=True)
    return head


def _builder(method: str, path: Path):
    """The function rebuilding ``method``'s heads from a checkpoint (``classify.registry.HEAD_METHODS``)."""
    entry = HEAD_METHODS.get(method) if method in HEAD_METHODS else None
    if entry is None or entry.from_checkpoint is None:
        known = [m.name for m in HEAD_METHODS.values() if m.from_checkpoint is not None]
        raise CheckpointError(f"{path}: unknown head method {method!r}; known: {', '.join(known)}")
    return entry.from_checkpoint()


def load_head(sidecar_path: str | Path, backbone: Backbone) -> torch.nn.Module:
    """Rebuild the head described by ``<attribute>.json`` on ``backbone`` (its device, eval mode);
    the sidecar's ``method`` picks the builder in ``classify.registry.HEAD_METHODS``."""
    sidecar_path = Path(sidecar_path)
    sidecar = read_sidecar(sidecar_path)
    build = _builder(sidecar.get("method"), sidecar_path)
    require_patch_tokens(backbone, sidecar.get("method"))
    _check_compatible(sidecar, backbone, sidecar_path)
    tensors_path = sidecar_path.with_suffix(".safetensors")
    if not tensors_path.is_file():
        raise CheckpointError(f"{sidecar_path}: its tensors file {str(tensors_path)!r} is missing")
    if _sha256_file(tensors_path) != sidecar.get("tensors_sha256"):
        raise CheckpointError(f"{tensors_path}: contents do not match the sha256 in {sidecar_path.name} "
                              f"(corrupt or replaced file)")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{tensors_path}: not a readable safetensors file: {exc}") from None
    try:
        head = build(sidecar, tensors, backbone)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{tensors_path}: tensors do not fit a {sidecar.get('method')} head on "
                              f"{backbone.model_id}: {exc}") from None
    return head.to(backbone.device).eval()


def load_head_bundle(directory: str | Path, backbone: Backbone) -> dict[str, torch.nn.Module]:
    """Every head checkpoint ``<attribute>.json`` in ``directory``, keyed by attribute name.

    Raises ``CheckpointError`` for a missing folder, a folder without any checkpoint, or a
    checkpoint that does not fit ``backbone``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"heads folder {str(directory)!r} does not exist")
    sidecars = [directory / f"{name}.json" for name in ATTRIBUTES if (directory / f"{name}.json").is_file()]
    if not sidecars:
        raise CheckpointError(f"{directory}: no head checkpoints (<attribute>.json + .safetensors) found")
    return {path.stem: load_head(path, backbone) for path in sidecars}


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def save_train_state(path: str | Path, head: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                     epoch: int, progress: dict, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write what resuming after ``epoch`` needs: head and optimizer tensors, ``extra_tensors``
    (e.g. the best weights so far) and the JSON-able ``progress``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, groups = _flatten_optimizer(optimizer.state_dict())
    tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()})
    write_atomic(path, lambda p: save_file(tensors, str(p)))
    sidecar = {"format": TRAIN_STATE_FORMAT, "epoch": epoch, "param_groups": groups, "progress": progress}
    write_atomic(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(sidecar, indent=2, default=str)))
    return path


def load_train_state(path: str | Path, head: torch.nn.Module,
                     optimizer: torch.optim.Optimizer) -> tuple[int, dict, dict[str, torch.Tensor]]:
    """Restore what ``save_train_state`` wrote into ``head`` and ``optimizer``.

    Returns (last finished epoch, progress, extra tensors); ``CheckpointError`` if unreadable.
    """
    path = Path(path)
    try:
        sidecar = json.loads(path.with_suffix(".json").read_text())
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: cannot resume from this training state: {exc}") from None
    if sidecar.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path}: not a city-audit training state")
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")}, strict=True)
    state: dict = {"state": {}, "param_groups": sidecar["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return int(sidecar["epoch"]), sidecar["progress"], extra


def serving_heads(backbone: Backbone, heads_dir: str | Path | None = None) -> dict[str, torch.nn.Module]:
    """One head per attribute for inference: the checkpoints in ``heads_dir`` (any method) where
    present, zero-shot for every other attribute (their prompts go through the text tower once)."""
    trained = load_head_bundle(heads_dir, backbone) if heads_dir is not None else {}
    missing = [attribute for name, attribute in ATTRIBUTES.items() if name not in trained]
    zero_shot = zero_shot_heads(backbone, missing) if missing else {}
    return {name: trained.get(name) or zero_shot[name] for name in ATTRIBUTES}
