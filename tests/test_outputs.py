"""An output folder is replaced as a whole or not at all, by one run at a time, and never a user's own folder."""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import pytest

from conftest import SAMPLE_BBOX
from contracts.results import RunFolder
from warehouse.outputs import OutputFolderError, check_output_folder, claim, staged, swap_in


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every published file (the image store, the work folder and the lock aside)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] not in ("images", "work", ".city-audit.lock")}


@pytest.fixture
def finished_run(sample_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(sample_run["out"], out)
    return out


def test_a_failed_rerun_leaves_the_previous_outputs_byte_identical(finished_run, prefect_harness, monkeypatch):
    import flows.stages
    from flows.city_audit import audit

    before = _digests(finished_run)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(flows.stages, "publish_run", disk_full)
    with pytest.raises(OutputFolderError, match="no space left on the disk holding"):
        audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=str(finished_run), device="cpu")
    assert _digests(finished_run) == before
    assert not list(finished_run.glob(".staging-*"))


def test_a_second_run_into_the_same_folder_is_refused(finished_run, prefect_harness):
    from flows.city_audit import audit

    with claim(finished_run):
        with pytest.raises(OutputFolderError, match="another city-audit run .* is writing to"):
            audit(bbox=SAMPLE_BBOX, source="sample", model="tiny", out=str(finished_run), device="cpu")


def test_a_users_folder_is_refused_unless_forced(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "map.png").write_bytes(b"my own map")
    (users / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="did not write .*map.png.*--force"):
        check_output_folder(users)
    assert check_output_folder(users, force=True) == users.resolve()
    assert check_output_folder(tmp_path / "new") == (tmp_path / "new").resolve()
    (users / "run.json").write_text("{}")  # a city-audit run folder, with the user's notes beside it
    assert check_output_folder(users) == users.resolve()


def test_the_swap_replaces_the_outputs_as_a_whole_and_drops_stale_partitions(tmp_path):
    out = tmp_path / "out"
    (out / "tiles" / "segments" / "tile=14_1_2").mkdir(parents=True)
    (out / "tiles" / "segments" / "tile=14_1_2" / "old-run.parquet").write_bytes(b"old")
    (out / "segments.parquet").write_bytes(b"old")
    (out / "run.json").write_text('{"run_id": "old"}')
    (out / "notes.txt").write_text("the user's")
    (out / "images").mkdir()
    (out / "images" / "1.jpg").write_bytes(b"jpeg")
    folder = RunFolder(out, "new")
    with staged(folder) as staging:
        (staging / "segments.parquet").write_bytes(b"new")
        (staging / "run.json").write_text('{"run_id": "new"}')
        swap_in(staging, out)
    assert (out / "segments.parquet").read_bytes() == b"new" and '"new"' in (out / "run.json").read_text()
    assert not (out / "tiles").exists() and not folder.staging.exists()
    assert (out / "notes.txt").read_text() == "the user's" and (out / "images" / "1.jpg").is_file()


def test_a_failure_while_staging_removes_the_staging_folder_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"run_id": "old"}')
    folder = RunFolder(out, "new")
    with pytest.raises(RuntimeError, match="boom"):
        with staged(folder) as staging:
            (staging / "run.json").write_text("partial")
            raise RuntimeError("boom")
    assert not folder.staging.exists() and (out / "run.json").read_text() == '{"run_id": "old"}'


def test_an_interrupted_runs_staging_folder_is_removed_by_the_next_claim(tmp_path):
    out = tmp_path / "out"
    (out / ".staging-killed").mkdir(parents=True)
    (out / "run.json").write_text("{}")
    with claim(out):
        assert not (out / ".staging-killed").exists()
