"""Shared fixtures. Tests are offline: the tiny random backbone, the bundled sample, local servers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect: no telemetry, a throwaway Prefect home, never a real API.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="city-audit-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never try a model hub from the tests
os.environ.setdefault("CITY_AUDIT_BASEMAP_URL", "off")  # map.png never fetches real tiles (tests serve their own)
# text-embedding disk cache: a throwaway folder (session fixtures), and a fresh one per test (below)
os.environ["CITY_AUDIT_TEXT_CACHE"] = tempfile.mkdtemp(prefix="city-audit-text-")

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "sample"
SAMPLE_BBOX = "9.16,48.76,9.18,48.78"

pytest_plugins = ["tests.mhadapter_support"]  # session fixtures of the MHAdapter tests, set up once


def pytest_collection_finish(session: pytest.Session) -> None:
    """An empty selection is an error, never a silent green run (pytest's exit code 5)."""
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected: check the test paths and -k/-m filters")


@pytest.fixture(autouse=True)
def _fresh_text_cache(tmp_path_factory, monkeypatch):
    """Every test starts with an empty text-embedding disk cache of its own (classify.text_cache),
    so tests that count text-tower calls stay hermetic and nothing is written to ~/.cache."""
    monkeypatch.setenv("CITY_AUDIT_TEXT_CACHE", str(tmp_path_factory.mktemp("text-cache")))


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server on a throwaway database, shared by every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_backbone():
    from classify.backbone import load_backbone

    return load_backbone("tiny", device="cpu")


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, prefect_harness) -> dict:
    """One city-audit flow run over the bundled Stuttgart sample with the tiny model."""
    from flows.city_audit import audit

    out = tmp_path_factory.mktemp("sample-run")
    return audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=str(out), device="cpu")


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    """../shared/sample (test-only reference data); skipped where it is absent."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip("../shared/sample is not available")
    return SHARED_SAMPLE
