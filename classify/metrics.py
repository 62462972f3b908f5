"""Classification metrics as the CLIP-MHAdapter evaluator reports them (methods §1.6), in numpy.

All numbers come from one confusion matrix over the attribute's fixed class list. They follow
scikit-learn's definitions with ``zero_division=0``: macro scores over the classes present in
``y_true`` (``labels=np.unique(y_true)``, the reference's way) and also over all C classes
(which does not silently drop a class missing from the split); weighted scores by support;
``balanced_accuracy_score(adjusted=True)``.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(C, C) counts: rows are true classes, columns predicted classes."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=float)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _float_or_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def classification_metrics(y_true, y_pred, classes: list[str] | tuple[str, ...]) -> dict:
    """Every reported metric for integer labels ``y_true``/``y_pred`` over ``classes``.

    Returns a JSON-able dict: ``accuracy``, ``macro_precision``/``macro_recall``/``macro_f1``
    (present classes), ``macro_f1_all_classes``, ``weighted_precision``/``weighted_recall``/
    ``weighted_f1``, ``adjusted_balanced_accuracy`` (None when only one class is present),
    ``per_class`` (support, precision, recall = per-class accuracy, f1), ``mean_per_class_accuracy``,
    ``confusion_matrix`` and ``n``.
    """
    n_classes = len(classes)
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    n = int(matrix.sum())
    if n == 0:
        raise ValueError("no predictions to evaluate")
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = support > 0
    recall_present = recall[present]
    if recall_present.size > 1:
        chance = 1.0 / recall_present.size
        adjusted_balanced = (recall_present.mean() - chance) / (1.0 - chance)
    else:
        adjusted_balanced = float("nan")
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall_present.mean()),
        "macro_f1": float(f1[present].mean()),
        "macro_f1_all_classes": float(f1.mean()),
        "weighted_precision": float((precision * support).sum() / n),
        "weighted_recall": float((recall * support).sum() / n),
        "weighted_f1": float((f1 * support).sum() / n),
        "adjusted_balanced_accuracy": _float_or_none(adjusted_balanced),
        "mean_per_class_accuracy": float(recall_present.mean()),
        "per_class": {
            name: {"support": int(support[i]), "precision": float(precision[i]),
                   "accuracy": float(recall[i]) if present[i] else None, "f1": float(f1[i])}
            for i, name in enumerate(classes)
        },
        "classes": list(classes),
        "confusion_matrix": matrix.tolist(),
    }
