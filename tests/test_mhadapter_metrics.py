"""Evaluator numbers on hand-made predictions, worked out by hand in the comments."""

from __future__ import annotations

import pytest

from classify.metrics import classification_metrics


def test_three_class_numbers():
    # confusion (rows true a,b,c): a [2,1,0], b [1,1,0], c [0,0,1]
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 2], ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # per-class F1 = P = R here
    assert m["macro_f1_all_classes"] == pytest.approx(13 / 18)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 1) / 6)
    assert m["adjusted_balanced_accuracy"] == pytest.approx((13 / 18 - 1 / 3) / (1 - 1 / 3))  # = 7/12
    assert m["per_class"]["b"] == {"support": 2, "precision": 0.5, "accuracy": 0.5, "f1": 0.5}
    assert m["mean_per_class_accuracy"] == pytest.approx(13 / 18)


def test_absent_class_is_dropped_by_the_reference_macro_f1_only():
    # 4 classes; c never occurs, d is predicted once but never true
    m = classification_metrics([0, 0, 1, 1], [0, 3, 1, 1], ["a", "b", "c", "d"])
    assert m["macro_precision"] == pytest.approx(1.0)  # a: 1/1, b: 2/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)  # a: P 1, R 1/2 -> 2/3; b: 1
    assert m["macro_f1_all_classes"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert m["adjusted_balanced_accuracy"] == pytest.approx((0.75 - 0.5) / 0.5)
    assert m["per_class"]["c"]["accuracy"] is None and m["per_class"]["d"]["precision"] == 0.0


def test_degenerate_inputs():
    perfect = classification_metrics([1, 1], [1, 1], ["x", "y"])
    assert perfect["accuracy"] == 1.0 and perfect["adjusted_balanced_accuracy"] is None  # one class: undefined
    chance = classification_metrics([0, 1, 0, 1], [0, 0, 0, 0], ["x", "y"])
    assert chance["adjusted_balanced_accuracy"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], ["x", "y"])
