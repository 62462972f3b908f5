"""Text embeddings on disk (methods §1.4), shared by every method.

All methods keep the text side frozen, so a list of strings (class prompts, templates, LLM
descriptions) always maps to the same embeddings for given backbone weights. ``cached_encode``
keys a safetensors file by sha256 of (open_clip architecture, backbone weights hash, precision,
the exact strings in order) and only runs the text tower on a miss. The folder is
``$CITY_AUDIT_TEXT_CACHE`` (``off`` disables the cache), else
``$XDG_CACHE_HOME/city-audit/text-embeddings`` (``~/.cache/...``). Files are written atomically,
so concurrent runs at worst compute the same embeddings twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contracts.files import write_atomic

TEXT_CACHE_ENV = "CITY_AUDIT_TEXT_CACHE"


def text_cache_dir() -> Path | None:
    """The cache folder, or None when ``$CITY_AUDIT_TEXT_CACHE=off``."""
    configured = os.environ.get(TEXT_CACHE_ENV)
    if configured is not None and configured.strip().lower() in ("off", "0", "none", ""):
        return None
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "city-audit" / "text-embeddings"


def text_key(open_clip_name: str, weights_sha256: str, precision: str, texts: list[str], kind: str) -> str:
    """sha256 naming one cached embedding matrix (``kind``: which encoding, e.g. normalised or raw)."""
    payload = json.dumps([open_clip_name, weights_sha256, precision, kind, list(texts)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_encode(backbone, texts: list[str], encode: Callable[[list[str]], torch.Tensor],
                  kind: str = "normalized") -> torch.Tensor:
    """``encode(texts)`` through the disk cache: (len(texts), E) fp32 on the device ``encode`` returns.

    ``kind`` names the encoding (the normalised embeddings of ``Backbone.encode_text`` or the raw
    ones the description-based methods average), so the two never share an entry."""
    directory = text_cache_dir()
    if directory is None or backbone.device.type == "meta" or not texts:
        return encode(texts)
    precision = "bf16" if backbone.device.type == "cuda" else "fp32"
    key = text_key(backbone.spec.open_clip_name, backbone.weights_sha256, precision, texts, kind)
    path = directory / f"{key}.safetensors"
    try:
        stored = load_file(str(path))["embeddings"]
        if stored.shape[0] == len(texts):
            return stored.to(backbone.device if kind == "normalized" else "cpu")
    except (FileNotFoundError, SafetensorError, OSError, KeyError):
        pass
    embeddings = encode(texts)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"embeddings": embeddings.detach().float().cpu().contiguous()}
        write_atomic(path, lambda partial: save_file(tensors, str(partial)))
    except OSError:
        pass  # a read-only cache folder only costs the re-encode
    return embeddings
