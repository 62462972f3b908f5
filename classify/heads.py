"""Attribute heads: small modules that turn one backbone pass into per-attribute logits.

Every head reads ``ImageFeatures`` (pooled embedding + patch tokens) and returns logits over its
attribute's classes, so all 8 attributes share one image-tower pass. A head knows its
``attribute``, its ``method`` (``zeroshot``, ``mhadapter``, ...) and a ``head_id`` that is
folded into each prediction's ``model_id``. Heads adapted without labels (``microclip``, ``fair``)
set ``needs_pixels = True``: they run their own image tower (with adapted LayerNorms) on
``features.pixels``, which ``classify.predict`` then attaches to each batch.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Protocol

import torch
from torch import nn

from classify.backbone import Backbone, ImageFeatures
from classify.schema import ATTRIBUTES, Attribute


class Head(Protocol):
    attribute: Attribute
    method: str
    head_id: str

    def __call__(self, features: ImageFeatures) -> torch.Tensor: ...


class ZeroShotHead(nn.Module):
    """CLIP zero-shot: ``logit_scale * cos(pooled image embedding, class prompt embedding)``."""

    method = "zeroshot"

    def __init__(self, attribute: Attribute, text_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        if text_embeddings.shape[0] != len(attribute.classes):
            raise ValueError(f"{attribute.name}: {text_embeddings.shape[0]} text embeddings for "
                             f"{len(attribute.classes)} classes")
        self.attribute = attribute
        self.logit_scale = logit_scale
        self.register_buffer("text_embeddings", text_embeddings.float())
        prompts = "\n".join(attribute.prompts()).encode()
        self.head_id = "zeroshot:" + hashlib.sha256(prompts).hexdigest()[:8]

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        image = nn.functional.normalize(features.pooled.float(), dim=-1)
        return self.logit_scale * image @ self.text_embeddings.T


def zero_shot_heads(backbone: Backbone, attributes: Iterable[Attribute] = ATTRIBUTES.values()) -> dict[str, ZeroShotHead]:
    """Zero-shot heads for the given attributes; every prompt goes through the text tower in one call."""
    attributes = list(attributes)
    prompts = [p for a in attributes for p in a.prompts()]
    embeddings = backbone.encode_text(prompts)
    heads, start = {}, 0
    for attribute in attributes:
        n = len(attribute.classes)
        heads[attribute.name] = ZeroShotHead(attribute, embeddings[start:start + n], backbone.logit_scale).to(backbone.device)
        start += n
    return heads
