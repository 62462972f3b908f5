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


#: inverse regularisation strengths tried by ``fit_linear_probe`` (sklearn's C), picked on validation macro-F1
PROBE_C_GRID = (0.1, 1.0, 10.0, 100.0)


def _lbfgs_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float, class_weights: torch.Tensor | None,
                    max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Multinomial logistic regression, sklearn's objective scaled by 1/(C·n): mean CE + ||W||²/(2Cn).

    Full batch, zero initialisation, L-BFGS with strong Wolfe line search: no randomness at all,
    so the same features give the same weights. Returns (W (C, E), b (C,), fit info)."""
    n, e = x.shape
    weight = torch.zeros(n_classes, e, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    x64, cw = x.double(), None if class_weights is None else class_weights.double()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x64 @ weight.T + bias, y, weight=cw) + (weight ** 2).sum() / (2 * c * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        loss = optimizer.step(objective)
        final = objective()
    gradient = max(weight.grad.abs().max().item(), bias.grad.abs().max().item())
    steps = optimizer.state[optimizer._params[0]].get("n_iter", 0)
    info = {"C": c, "loss": float(final.detach()), "max_abs_gradient": gradient, "iterations": int(steps),
            "converged": gradient <= max(10 * tol, 1e-4), "initial_loss": float(loss.detach())}
    return weight.detach().float(), bias.detach().float(), info


def fit_linear_probe(attribute: Attribute, train_features: ImageFeatures, train_labels: list[int],
                     val_features: ImageFeatures | None = None, val_labels: list[int] | None = None, *,
                     c_grid=PROBE_C_GRID, class_weighting: str = "inverse", max_iter: int = 500,
                     tol: float = 1e-6) -> tuple[LinearProbeHead, dict]:
    """A converged, deterministic linear probe: logistic regression on the L2-normalised pooled
    embeddings (the CLIP paper's protocol), fitted on exactly ``train_labels``.

    Each C of ``c_grid`` is fitted with full-batch L-BFGS; the one with the best macro-F1 on the
    validation features is kept (the first C without validation data). ``class_weighting``
    ``inverse`` weights the loss by 1/n_c like the MHAdapter training. Returns (head, fit info).
    """
    from classify.metrics import classification_metrics

    n_classes = len(attribute.classes)
    x = nn.functional.normalize(train_features.pooled.float().cpu(), dim=-1)
    y = torch.tensor(list(train_labels), dtype=torch.long)
    counts = torch.bincount(y, minlength=n_classes).double()
    weights = None
    if class_weighting == "inverse":
        weights = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    grid = list(c_grid) if val_features is not None else list(c_grid)[:1]
    best, fits = None, []
    for c in grid:
        w, b, info = _lbfgs_logistic(x, y, n_classes, c, weights, max_iter, tol)
        score = None
        if val_features is not None:
            xv = nn.functional.normalize(val_features.pooled.float().cpu(), dim=-1)
            predicted = (xv @ w.T + b).argmax(-1).tolist()
            score = classification_metrics(list(val_labels), predicted, attribute.classes)["macro_f1"]
            info["val_macro_f1"] = score
        fits.append(info)
        if best is None or (score is not None and score > best[0]):
            best = (score, w, b, info)
    head = LinearProbeHead(attribute, x.shape[1])
    with torch.no_grad():
        head.linear.weight.copy_(best[1])
        head.linear.bias.copy_(best[2])
    return head, {"solver": "lbfgs logistic regression", "chosen_C": best[3]["C"], "fits": fits,
                  "class_weighting": class_weighting, "n_train": len(y), "converged": best[3]["converged"]}
