"""Adaptation reports: gain against the un-adapted method head, predictions changed, ZeroR, collapse warning, val split."""

import json

from classify.adapt import adapt_attribute
from classify.adapt_eval import adaptation_details, adaptation_table, compare_adapted, pseudo_label_warnings
from tests.adapt_support import FAST_ADAPT, few_files


def test_report_has_the_unadapted_head_changed_share_and_val_split(tiny_backbone, pano_csv, tmp_path):
    adapt_attribute("fair", "pano_status", few_files(), tiny_backbone, tmp_path, config=FAST_ADAPT, progress=False)
    report = compare_adapted("pano_status", pano_csv, tiny_backbone, tmp_path, tmp_path / "eval", progress=False)
    assert set(report["methods"]) == {"zeroshot", "fair"} and set(report["references"]) == {"zero_r (oracle)", "fair (un-adapted)"}
    changed = report["changed_by_adaptation"]
    assert 0 <= changed["n"] <= report["n"] and changed["share"] == changed["n"] / report["n"]
    details = adaptation_details([report])
    assert "| pano_status |" in details and f"{changed['n']} of {report['n']}" in details
    assert "(oracle: majority of the evaluation labels)" in details  # a plain CSV test split: no training labels
    assert "| pano_status | zero_r (oracle) |" in adaptation_table([report])  # ZeroR in the headline table too
    val = compare_adapted("pano_status", pano_csv, tiny_backbone, tmp_path, tmp_path / "val", split="val",
                          progress=False)
    assert val["n"] == 4 and "zero_r" in val["references"]  # the held-out part, ZeroR from the training part
    assert "| zero_r |" in val["table"]


def test_collapsed_pseudo_labels_are_flagged(tmp_path):
    collapsed = {"metrics": {"history": [{"pseudo_label_counts": {"clear": 97, "cloudy": 2, "foggy": 1}}]}}
    healthy = {"metrics": {"history": [{"pseudo_label_counts": {"clear": 50, "cloudy": 30, "foggy": 20}}]}}
    assert "collapsed: 97%" in pseudo_label_warnings(collapsed)[0] and "'clear'" in pseudo_label_warnings(collapsed)[0]
    assert pseudo_label_warnings(healthy) == [] and pseudo_label_warnings({}) == []
    assert json.dumps(pseudo_label_warnings(collapsed))
