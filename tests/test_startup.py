"""What a run loads before its first stage: the command line and the flow module stay light (issue 12).

Speed itself is measured by ``benchmarks/startup.py``, not here: these tests check which modules
each step imports, in a fresh interpreter, and that the background import of the model stack is safe.
"""

import json
import subprocess
import sys
import threading

import pytest

from flows import cli

#: Seconds of imports a step must not pay for: torch and open_clip (~6 s), Prefect's server app (~3 s),
#: the adaptation methods (only with --adapt).
HEAVY = ("torch", "open_clip", "torchvision", "timm", "prefect.server.api.server", "uvicorn", "classify.adapt",
         "classify.microclip", "classify.fair")


def _imported_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_command_line_imports_neither_prefect_nor_torch():
    loaded = _imported_after("import flows.cli")
    assert not loaded & {*HEAVY, "prefect", "geopandas", "duckdb"}, "flows.cli checks options in milliseconds"


def test_the_flow_module_leaves_torch_open_clip_and_the_server_app_to_the_stages_that_use_them():
    loaded = _imported_after("import flows.city_audit")
    assert "prefect" in loaded and "flows.stages" in loaded
    assert not loaded & set(HEAVY), f"imported by flows.city_audit: {sorted(loaded & set(HEAVY))}"


def test_starting_a_run_with_our_own_server_does_not_import_its_app_here():
    loaded = _imported_after("from flows.server import OwnedServer")
    assert not loaded & {"prefect", "prefect.server.api.server", "uvicorn"}


def test_preload_imports_in_the_background_and_leaves_errors_to_the_stage(monkeypatch):
    hooked = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)
    thread = cli.preload(("city_audit_no_such_module", "json"))
    assert not thread.daemon  # the interpreter never exits in the middle of an import
    thread.join(timeout=60)
    assert not thread.is_alive() and hooked == []


def test_the_model_modules_are_what_the_model_stages_import():
    stages = (cli.__file__.replace("cli.py", "stages.py"))
    text = open(stages, encoding="utf-8").read()
    for module in cli.MODEL_MODULES:
        assert f"from {module} import" in text
