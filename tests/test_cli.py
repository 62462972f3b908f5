"""The city-audit command line."""

import subprocess
import sys

import pytest

from flows.cli import build_parser, config_options, main
from flows.config import run_config


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("bbox, fragment", [
    ("9.18,48.76,9.16,48.78", "swapped"),
    ("1,2,3", "exactly 4 numbers"),
    ("0,0,20,20", "more than the limit"),
])
def test_bad_bbox_exits_2_before_any_work(bbox, fragment, tmp_path):
    result = _cli("run", "--bbox", bbox, "--model", "tiny", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert "prefect" not in (result.stdout + result.stderr).lower()  # refused before a flow (or its server) started


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit-b16" in out and "ViT-B-16-quickgelu" in out and "tiny" in out


def test_run_defaults_are_the_real_model_and_sample_source():
    config = run_config(**config_options(build_parser().parse_args(["run", "--bbox", "9.16,48.76,9.18,48.78"])))
    assert (config.model.model, config.imagery.source, config.roads.roads, config.matching.max_distance_m) == \
        ("vit-b16", "sample", "sample", 25.0)
