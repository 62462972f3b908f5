"""Baseline heads for comparison tables (methods §2.8): linear probe and ZeroR.

Both satisfy the ``Head`` protocol, so they are evaluated by exactly the same code as the
zero-shot and MHAdapter heads.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from classify.backbone import ImageFeatures
from classify.schema import Attribute


class LinearProbeHead(nn.Module):
    """Linear(E → C) on the L2-normalised pooled CLIP embedding (input width from ``visual.output_dim``, MHA-P14)."""

    method = "linear_probe"

    def __init__(self, attribute: Attribute, embed_dim: int):
        super().__init__()
        self.attribute = attribute
        self.linear = nn.Linear(embed_dim, len(attribute.classes))

    @property
    def head_id(self) -> str:
        """``linear_probe:<hash of the weights>``."""
        digest = hashlib.sha256()
        for tensor in (self.linear.weight, self.linear.bias):
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return "linear_probe:" + digest.hexdigest()[:12]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Weight and bias of the linear layer."""
        return list(self.parameters())

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        """Logits (B, C) from the normalised pooled embedding."""
        return self.linear(nn.functional.normalize(features.pooled.float(), dim=-1))


class ZeroRHead(nn.Module):
    """Always the training set's majority class: the floor every trained head must beat."""

    method = "zero_r"

    def __init__(self, attribute: Attribute, class_counts: list[int]):
        super().__init__()
        self.attribute = attribute
        self.majority = int(torch.tensor(class_counts).argmax())
        self.head_id = f"zero_r:{attribute.classes[self.majority]}"

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        """One-hot logits (B, C) on the majority class."""
        logits = torch.zeros(features.pooled.shape[0], len(self.attribute.classes), device=features.pooled.device)
        logits[:, self.majority] = 1.0
        return logits
