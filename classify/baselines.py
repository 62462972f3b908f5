"""Baseline heads for comparison tables (methods §2.8): ZeroR, linear probe, CLIP-Adapter (CoOp:
``classify.prompt_learning``).

All satisfy the ``Head`` protocol, so they are evaluated by exactly the same code as the
zero-shot and MHAdapter heads.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

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


# --- trained baselines of methods §2.8: CLIP-Adapter (here) and CoOp (classify.prompt_learning) ---------------

@dataclass(frozen=True)
class BaselineConfig:
    """The reference's optimiser for the trained baselines (methods §2.8): SGD lr 2e-3 (momentum 0.9, weight
    decay 5e-4, Dassl's defaults), 100 epochs, batch 256, cosine, 1 warmup epoch at a constant 1e-5, early
    stopping with patience 10. Checkpoint selection on validation macro-F1, like the MHAdapter head (MHA-P9),
    not on accuracy as in the reference."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    patience: int = 10
    seed: int = 42
    class_weighting: str = "inverse"


def baseline_lr(epoch: int, config: BaselineConfig) -> float:
    """Constant ``warmup_lr`` for the warmup epochs, then cosine from ``lr`` to 0 over the rest."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    span = max(1, config.epochs - config.warmup_epochs)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))


def fit_baseline(module: nn.Module, parameters: list[nn.Parameter], logits_fn, train_x: torch.Tensor,
                 train_y: list[int], val_x: torch.Tensor, val_y: list[int], classes: tuple[str, ...],
                 config: BaselineConfig, device: torch.device) -> dict:
    """Train ``parameters`` so that ``logits_fn(x)`` (x: a batch of pooled embeddings) fits the labels.

    Deterministic: mini-batch order from ``seed + epoch``, no other randomness. Leaves ``module``
    with the weights of the best validation macro-F1 (ties: lower validation loss). Returns the fit
    info (best epoch, its validation metrics, epochs run)."""
    from classify.metrics import classification_metrics

    n_classes = len(classes)
    train_x, val_x = train_x.detach().clone(), val_x.detach().clone()  # never inference-mode tensors under autograd
    y = torch.tensor(list(train_y), dtype=torch.long)
    yv = torch.tensor(list(val_y), dtype=torch.long)
    counts = torch.bincount(y, minlength=n_classes).float()
    weights = None
    if config.class_weighting == "inverse":
        weights = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
        weights = (weights / weights.sum()).to(device)
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    best, best_state, stale, epochs_run = None, None, 0, 0
    with torch.enable_grad():
        for epoch in range(config.epochs):
            if stale >= config.patience:
                break
            for group in optimizer.param_groups:
                group["lr"] = baseline_lr(epoch, config)
            module.train()
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed + epoch))
            for start in range(0, len(order), config.batch_size):
                index = order[start:start + config.batch_size]
                logits = logits_fn(train_x[index].to(device))
                loss = nn.functional.cross_entropy(logits, y[index].to(device), weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            module.eval()
            with torch.no_grad():
                val_logits = torch.cat([logits_fn(val_x[i:i + config.batch_size].to(device)).float().cpu()
                                        for i in range(0, len(yv), config.batch_size)])
            val_loss = float(nn.functional.cross_entropy(val_logits, yv, weight=None if weights is None else weights.cpu()))
            metrics = classification_metrics(yv.numpy(), val_logits.argmax(-1).numpy(), classes)
            key = (metrics["macro_f1"], -val_loss)
            epochs_run = epoch + 1
            if best is None or key > best[0]:
                best, stale = (key, epoch, metrics), 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
    module.load_state_dict(best_state)
    module.eval()
    return {"best_epoch": best[1], "val_macro_f1": best[2]["macro_f1"], "val_accuracy": best[2]["accuracy"],
            "epochs_run": epochs_run, "optimizer": f"SGD lr {config.lr:g}, cosine, {config.epochs} epochs max"}


class ClipAdapterHead(nn.Module):
    """CLIP-Adapter (methods §2.8): a bias-free MLP E → E/4 → E with ReLUs on the pooled image embedding,
    blended ``ratio·A(g) + (1−ratio)·g`` (ratio 0.2), then ``logit_scale · cos(·, class prompt embedding)``
    against the frozen §2.3 prompt embeddings. Trains on cached pooled embeddings only."""

    method = "clip_adapter"

    def __init__(self, attribute: Attribute, text_embeddings: torch.Tensor, logit_scale: float, ratio: float = 0.2,
                 reduction: int = 4):
        super().__init__()
        self.attribute, self.logit_scale, self.ratio = attribute, logit_scale, ratio
        e = text_embeddings.shape[1]
        self.adapter = nn.Sequential(nn.Linear(e, e // reduction, bias=False), nn.ReLU(inplace=True),
                                     nn.Linear(e // reduction, e, bias=False), nn.ReLU(inplace=True))
        self.register_buffer("text_embeddings", text_embeddings.detach().clone().float())  # no inference tensor

    @property
    def head_id(self) -> str:
        """``clip_adapter:<hash of the adapter weights>``."""
        digest = hashlib.sha256()
        for tensor in self.adapter.state_dict().values():
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return "clip_adapter:" + digest.hexdigest()[:12]

    def logits_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) from pooled embeddings (B, E)."""
        g = pooled.float()
        f = self.ratio * self.adapter(g) + (1 - self.ratio) * g
        return self.logit_scale * nn.functional.normalize(f, dim=-1) @ self.text_embeddings.T

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        """Logits (B, C)."""
        return self.logits_from_pooled(features.pooled)


def fit_clip_adapter(attribute: Attribute, text_embeddings: torch.Tensor, logit_scale: float,
                     train_features: ImageFeatures, train_labels: list[int], val_features: ImageFeatures,
                     val_labels: list[int], config: BaselineConfig = BaselineConfig(),
                     device: torch.device | str = "cpu") -> tuple[ClipAdapterHead, dict]:
    """A CLIP-Adapter head trained on the pooled embeddings of ``train_features`` (seeded: the same
    features and seed give the same weights), selected on the validation features. Returns (head, info)."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    head = ClipAdapterHead(attribute, text_embeddings.cpu(), logit_scale).to(device)
    info = fit_baseline(head, list(head.adapter.parameters()), head.logits_from_pooled, train_features.pooled.float(),
                        train_labels, val_features.pooled.float(), val_labels, attribute.classes, config, device)
    return head, info


def zero_r_reference(attribute: Attribute, train_counts: list[int] | None = None, sidecar: dict | None = None,
                     eval_counts: list[int] | None = None) -> tuple[str, ZeroRHead, str]:
    """The ZeroR row every comparison table shows, and where its majority class came from.

    In order of preference: the training labels' counts (the honest ZeroR); the training class
    counts a checkpoint records (``hyperparameters.train_class_counts``: the same thing when the
    training labels are not at hand); else the majority class of the evaluation labels themselves,
    which is an **oracle** (it peeks at the test labels) and so an upper bound of ZeroR. Returns
    (table row name, head, one-line note)."""
    if train_counts is not None:
        return "zero_r", ZeroRHead(attribute, train_counts), "majority class of the training labels"
    recorded = ((sidecar or {}).get("hyperparameters") or {}).get("train_class_counts")
    if recorded and len(recorded) == len(attribute.classes) and sum(recorded) > 0:
        return "zero_r", ZeroRHead(attribute, list(recorded)), \
            "majority class of the head's training labels (class counts recorded in its checkpoint)"
    if eval_counts is None:
        raise ValueError("ZeroR needs training counts, a checkpoint with them, or the evaluation labels")
    return "zero_r (oracle)", ZeroRHead(attribute, eval_counts), \
        ("no training labels: majority class of the EVALUATION labels, an oracle that peeks at them, so an "
         "upper bound of what ZeroR would score")
