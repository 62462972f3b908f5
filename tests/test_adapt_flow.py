"""The city-audit flow with adapt= on the sample area, and the adapt-city flow."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.adapt_support import SAMPLE
from tests.conftest import SAMPLE_BBOX
from tests.mhadapter_support import FAST, feature_cache_dir, pano_csv, trained_heads  # noqa: F401 - fixtures

FAST_OPTIONS = {"epochs": 1, "max_steps": 1, "batch_size": 4, "n_crops": 2, "num_workers": 0}  # AdaptConfig fields
#: the same as options of `city-audit run`
FAST_RUN_OPTIONS = {"epochs": 1, "max_steps": 1, "adapt_batch_size": 4, "crops": 2, "num_workers": 0}


@pytest.mark.integration
@pytest.mark.parametrize("method", ["microclip", "fair"])
def test_city_audit_adapts_on_its_own_images_and_records_the_method(prefect_harness, tmp_path, method, trained_heads):
    from flows.city_audit import audit

    summary = audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=str(tmp_path / "run"), device="cpu",
                         adapt=method, adapt_attributes=["weather", "glare"], **FAST_RUN_OPTIONS,
                         heads=str(trained_heads.checkpoint.parent))  # a trained pano_status head keeps serving
    with duckdb.connect(summary["outputs"]["database"], read_only=True) as db:
        methods = dict(db.sql("select attribute, string_agg(distinct method) from predictions group by 1").fetchall())
        n_weather = db.sql("select count(*) from predictions where attribute = 'weather'").fetchone()[0]
    assert methods.pop("weather") == methods.pop("glare") == method
    assert methods.pop("pano_status") == "mhadapter"
    assert set(methods.values()) == {"zeroshot"} and len(methods) == 5
    assert n_weather == summary["images"] == 19
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["parameters"]["adaptation"]["adapt"] == method
    adaptation = manifest["model"]["adaptation"]
    assert adaptation["n_images"] == 19 and set(adaptation["checkpoints"]) == {"weather", "glare"}
    assert manifest["model"]["heads"]["weather"]["method"] == method


@pytest.mark.integration
def test_adapt_city_flow_writes_checkpoints_and_the_comparison(prefect_harness, tmp_path):
    import pandas as pd

    from flows.adapt import adapt_city

    images = pd.read_parquet(SAMPLE / "images.parquet")
    labels = tmp_path / "pano.csv"
    pd.DataFrame({"path": [str(SAMPLE / p) for p in images.path], "label": images.camera_type}).to_csv(labels, index=False)
    summary = adapt_city(method="fair", images=str(SAMPLE), attributes=["pano_status"], model="tiny", device="cpu",
                         out=str(tmp_path / "heads"), options=FAST_OPTIONS, eval_data=str(labels))
    assert summary["method_name"] == "FAIR-style (reconstructed)" and summary["n_images"] == 19
    assert (tmp_path / "heads" / "pano_status.safetensors").is_file()
    assert "| pano_status | fair |" in summary["table"] and "| pano_status | zeroshot |" in summary["table"]


@pytest.mark.integration
def test_image_files_of_a_finished_run(sample_run):
    from pathlib import Path

    from classify.adapt import image_files

    files = image_files(sample_run["out"])
    assert len(files) == sample_run["images"] == 19
    assert all(Path(f).parent == Path(sample_run["out"]) / "images" and Path(f).is_file() for f in files)
