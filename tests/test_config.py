"""The typed run configuration: one definition for the CLI, the flow and run.json; bad values refused at the edge."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, SAMPLE_BBOX
from flows.cli import build_parser, config_options
from flows.config import GROUPS, RunConfig, cli_flag, run_config

#: Runs the CLI in a fresh interpreter and reports its exit code, stderr and whether Prefect or torch got imported.
PROBE = textwrap.dedent("""
    import contextlib, io, json, sys, time
    from flows.cli import main
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(sys.argv[1:])
    print(json.dumps({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start,
                      "prefect": "prefect" in sys.modules, "torch": "torch" in sys.modules}))
""")


def _probe(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _bad_values(tmp_path):
    heads_elsewhere = tmp_path / "heads"
    heads_elsewhere.mkdir()
    (heads_elsewhere / "weather.json").write_text(json.dumps({"method": "mhadapter", "backbone": {"name": "vit-b16"}}))
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("mine")
    users_folder = tmp_path / "my-reports"
    users_folder.mkdir()
    (users_folder / "report.md").write_text("my own report")
    return [
        (["--model", "nosuch"], "--model", "nosuch"),
        (["--weights", str(tmp_path / "missing.pt")], "--weights", "missing.pt"),
        (["--heads", str(tmp_path)], "--heads", "no head checkpoints"),
        (["--heads", str(heads_elsewhere), "--model", "tiny"], "--heads", "made for backbone 'vit-b16'"),
        (["--roads", str(tmp_path / "missing.osm.pbf")], "--roads", "missing.osm.pbf"),
        (["--source", "folder"], "--images", "--images FOLDER"),
        (["--source", "folder", "--images", str(tmp_path / "nowhere")], "--images", "does not exist"),
        (["--source", "flickr"], "--source", "flickr"),
        (["--batch-size", "many"], "--batch-size", "many"),
        (["--max-distance-m", "-5"], "--max-distance-m", "greater than 0"),
        (["--adapt", "magic"], "--adapt", "magic"),
        (["--strong", "sometimes"], "--strong", "sometimes"),
        (["--out", str(not_a_folder)], "--out", "is a file"),
        (["--out", str(users_folder)], "--out", "did not write (report.md)"),
        (["-m", "thumb_size=17"], "--mapillary", "--source mapillary"),
        (["--source", "mapillary", "-m", "thumb_size=17"], "--mapillary", "thumb_size"),
        (["--max-area-km2", "0"], "--max-area-km2", "greater than 0"),
        (["--bbox", "13.3,52.5,13.4,52.55"], "--source", "the bundled sample images cover only"),
        (["--bbox", "13.3,52.5,13.4,52.55", "--source", "mapillary"], "--roads", "the bundled sample roads cover only"),
    ]


def test_every_bad_value_fails_in_well_under_a_second_with_one_line_before_prefect(tmp_path):
    for extra, flag, fragment in _bad_values(tmp_path):
        result = _probe("run", "--bbox", SAMPLE_BBOX, "--model", "tiny", "--out", str(tmp_path / "out"), *extra)
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 2, (extra, result)
        assert len(lines) == 1 and lines[0].startswith(f"city-audit: error: {flag}:") and fragment in lines[0], (extra, lines)
        assert not result["prefect"] and not result["torch"], extra  # refused before any heavy import
        assert result["seconds"] < 1.0, (extra, result["seconds"])
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = _probe("--debug", "run", "--bbox", SAMPLE_BBOX, "--model", "nosuch")
    assert result["code"] == 2 and "Traceback" in result["stderr"]


@pytest.mark.parametrize("bbox", ["9.16,48.76,9.18,48.78", "[9.16, 48.76, 9.18, 48.78]", "-122.45,37.76,-122.43,37.78"])
def test_both_bbox_forms_and_negative_numbers_reach_the_configuration(bbox):
    from geo.bbox import bbox_argv

    elsewhere = ["--source", "mapillary", "--roads", str(REPO / "tests" / "data" / "pyrosm_test.osm.pbf")]
    args = build_parser().parse_args(bbox_argv(["run", "--bbox", bbox, "--model", "tiny", *elsewhere]))
    assert run_config(**config_options(args)).bbox == json.loads(bbox if bbox.startswith("[") else f"[{bbox}]")


def test_cli_options_are_the_configuration_fields_with_their_help():
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    by_flag = {flag: action for action in run._actions for flag in action.option_strings}
    fields = {(group, name): field for group, model in GROUPS.items() for name, field in model.model_fields.items()}
    for (group, name), field in fields.items():
        action = by_flag[cli_flag(group, name)]
        assert action.dest == f"config.{name}" and action.help == field.description, name
    options = {a.dest for a in run._actions if a.dest.startswith("config.")}
    assert options == {f"config.{name}" for _, name in fields} and len(fields) == 39  # 4 of them: the execution group; 2: --area and --copy-images


def test_the_configuration_records_typed_grouped_parameters():
    config = run_config(bbox=SAMPLE_BBOX, model="tiny", batch_size="8", by_year=True, max_distance_m="30")
    parameters = config.parameters()
    assert parameters["bbox"] == [9.16, 48.76, 9.18, 48.78]
    assert parameters["model"]["model"] == "tiny" and parameters["model"]["batch_size"] == 8
    assert parameters["outputs"]["by_year"] is True and parameters["matching"]["max_distance_m"] == 30.0
    assert RunConfig.model_validate(parameters) == config  # run.json's parameters rebuild the same run


def test_mapillary_options_become_typed_values():
    config = run_config(bbox=SAMPLE_BBOX, source="mapillary", mapillary={"min_spacing_m": "5", "thumb_size": "256"})
    assert config.imagery.mapillary == {"min_spacing_m": 5.0, "thumb_size": 256}


def test_the_flow_and_the_cli_record_the_same_parameters(sample_run):
    manifest = json.loads((REPO / sample_run["outputs"]["manifest"]).read_text())
    expected = run_config(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=sample_run["out"], device="cpu")
    assert manifest["parameters"] == expected.parameters()
    assert set(manifest["timings_s"]) >= {"collect_images", "load_road_segments", "load_backbone", "classify_images",
                                          "build_audit_database", "publish_outputs"}


def test_the_configuration_module_is_light():
    code = "import sys, time; t = time.perf_counter(); import flows.config; print(time.perf_counter() - t, " \
           "sorted(m for m in ('prefect', 'torch', 'pandas', 'duckdb', 'open_clip') if m in sys.modules))"
    seconds, heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                                    timeout=60).stdout.split(" ", 1)
    assert heavy.strip() == "[]"
    assert float(seconds) < 1.0
