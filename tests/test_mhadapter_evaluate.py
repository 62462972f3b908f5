"""Evaluation report, the train/evaluate commands and the train-head flow."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from classify.evaluate import PROBE_CONFIG, evaluate_attribute
from flows.cli import main
from tests.mhadapter_support import FAST

PROBE = PROBE_CONFIG.__class__(**{**FAST, "lr": 1e-2})


def test_report_compares_every_method_on_the_same_split(tiny_backbone, trained_heads, pano_csv, feature_cache_dir,
                                                        tmp_path):
    report = evaluate_attribute("pano_status", pano_csv, tiny_backbone, tmp_path, split="val",
                                heads_dir=trained_heads.checkpoint.parent, cache_dir=feature_cache_dir,
                                probe_config=PROBE, progress=False)
    assert list(report["methods"]) == ["zero_r", "zeroshot", "linear_probe", "clip_adapter", "coop", "mhadapter"]
    assert report["n"] == 4 and report["class_counts"] == {"non_panoramic": 2, "panoramic": 2}
    mh = report["methods"]["mhadapter"]
    assert mh["accuracy"] == trained_heads.fit.best_metrics["accuracy"]  # the split the head was selected on
    assert report["methods"]["zero_r"]["accuracy"] == 0.5
    for method, metrics in report["methods"].items():
        assert sum(map(sum, metrics["confusion_matrix"])) == 4
        with Image.open(report["confusion_pngs"][method]) as picture:
            assert picture.format == "PNG" and picture.width > 100
        assert f"| {method} |" in report["table"]
    assert json.loads((tmp_path / "pano_status-evaluation.json").read_text())["table"] == report["table"]


def test_a_test_csv_without_training_labels_skips_the_probe(tiny_backbone, pano_csv, tmp_path):
    report = evaluate_attribute("pano_status", pano_csv, tiny_backbone, tmp_path, split="test", progress=False)
    assert list(report["methods"]) == ["zero_r (oracle)", "zeroshot"] and "skipped" in report["notes"]["linear_probe"]
    assert "oracle" in report["notes"]["zero_r"] and "skipped" in report["notes"]["coop"]
    assert report["n"] == 19


def test_train_and_evaluate_commands(pano_csv, feature_cache_dir, tmp_path, capsys):
    heads = tmp_path / "heads"
    common = ["--attribute", "pano_status", "--data", str(pano_csv), "--model", "tiny", "--device", "cpu",
              "--cache-dir", str(feature_cache_dir)]
    assert main(["train", *common, "--out", str(heads), "--mode", "cached", "--epochs", "3", "--batch-size", "8",
                 "--attention-heads", "2", "--blend", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "trained on 15, validated on 4" in out
    sidecar = json.loads((heads / "pano_status.json").read_text())
    assert sidecar["adapter"]["heads"] == 2 and sidecar["hyperparameters"]["epochs"] == 3
    assert main(["evaluate", *common, "--heads", str(heads), "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    assert "| mhadapter |" in capsys.readouterr().out


def test_commands_report_bad_labels_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg,perspective\nb.jpg,fisheye-ish\n")
    assert main(["train", "--attribute", "pano_status", "--data", str(bad), "--model", "tiny", "--device", "cpu",
                 "--out", str(tmp_path / "h")]) == 2
    assert "row 3" in capsys.readouterr().err
    assert main(["evaluate", "--attribute", "pano_status", "--data", str(bad), "--model", "tiny", "--device", "cpu",
                 "--heads", str(tmp_path / "h"), "--out", str(tmp_path / "e")]) == 2


@pytest.mark.integration
def test_train_head_flow(prefect_harness, pano_csv, feature_cache_dir, tmp_path):
    from flows.train import train_head

    summary = train_head(attribute="pano_status", data=str(pano_csv), model="tiny", device="cpu", out=str(tmp_path),
                         mode="cached", epochs=3, batch_size=8, cache_dir=str(feature_cache_dir),
                         evaluate_split="val")
    assert summary["checkpoint"] == str(tmp_path / "pano_status.json") and summary["n_val"] == 4
    assert "| mhadapter |" in summary["evaluation"]["table"]
