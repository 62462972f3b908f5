"""``city-audit gss`` end to end, offline: a local fake of the Hugging Face dataset's file layout (served over real
HTTP in the Hub's resolve-URL form) and the fake Mapillary server serving the GSS sample JPEGs by id.

The fake dataset is built at test time from ``shared/sample/gss``. Its "labels" are the GSS MaxViT
**predictions** of ``context_predictions/`` (the real manual labels are not available offline); every
label file says so in a ``label_origin`` column and the fake repository's README.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from flows.cli import main
from flows.gss import GSS_REPO, ID_MAP_FILE
from tests.conftest import SHARED_SAMPLE
from tests.fake_mapillary.fixtures import FAST, TOKEN
from tests.fake_mapillary.photos import PhotoMapillary, gss_sample_entities

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = SHARED_SAMPLE / "gss"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/sample/gss is not available")
ATTRIBUTES = ("weather", "lighting_condition", "glare", "reflection", "quality", "view_direction", "platform",
              "pano_status")
WITH_IDS = {"weather", "pano_status", "platform", "glare"}  # the others need the dataset's id table
ORIGIN = "GSS MaxViT prediction (sample context_predictions), not a human label"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GONE_UUID, GONE_ID = "00000000-0000-4000-8000-000000000000", "999999999999999"


def _split(uuid: str) -> str:
    return "test" if int(hashlib.sha256(uuid.encode()).hexdigest(), 16) % 10 < 3 else "train"


def build_fake_dataset(root: Path) -> dict[str, bytes]:
    """The GSS repository layout: manual_labels/{train,test}/<attr>.csv, data/metadata_common_attributes.csv."""
    with (SAMPLE / "sample_mapping.csv").open(newline="") as handle:
        mapping = {row["uuid"]: row for row in csv.DictReader(handle)}
    files = {"README.md": f"Fake of {GSS_REPO} for tests. Labels are {ORIGIN}.\n".encode()}
    for attribute in ATTRIBUTES:
        with (SAMPLE / "context_predictions" / f"{attribute}.csv").open(newline="") as handle:
            predictions = list(csv.DictReader(handle))
        for split in ("train", "test"):
            columns = ["uuid", *(("source", "orig_id") if attribute in WITH_IDS else ()), "city", "lat", "lon",
                       attribute, "label_origin"]
            lines = [",".join(columns)]
            for row in predictions:
                if _split(row["uuid"]) != split:
                    continue
                meta = mapping[row["uuid"]]
                values = {**meta, attribute: row[attribute], "label_origin": ORIGIN}
                lines.append(",".join(str(values[c]) for c in columns))
            if attribute == "weather" and split == "train":  # a labelled image Mapillary no longer has
                lines.append(f"{GONE_UUID},Mapillary,{GONE_ID},Stuttgart,48.77,9.17,clear,{ORIGIN}")
            files[f"manual_labels/{split}/{attribute}.csv"] = ("\n".join(lines) + "\n").encode()
    id_lines = ["uuid,source,orig_id,lat,lon"] + [f"{u},{m['source']},{m['orig_id']},{m['lat']},{m['lon']}"
                                                  for u, m in mapping.items()]
    files[ID_MAP_FILE] = ("\n".join(id_lines) + "\n").encode()
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    return files


class FakeHub:
    """Answers ``HEAD|GET /datasets/<repo>/resolve/<revision>/<path>`` like the Hub; counts requests per path."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.gets, self.heads = files, Counter(), Counter()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body_too: bool):
                prefix = f"/datasets/{GSS_REPO}/resolve/"
                path = unquote(self.path.split("?")[0])
                if not path.startswith(prefix):
                    self.send_response(404)
                    self.end_headers()
                    return
                name = path[len(prefix):].split("/", 1)[1]
                (hub.gets if body_too else hub.heads)[name] += 1
                body = hub.files.get(name)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha1(body).hexdigest() + '"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "text/csv")
                self.end_headers()
                if body_too:
                    self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def do_GET(self):  # noqa: N802
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return "http://%s:%d" % self.server.server_address[:2]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest turns the Hub off; this is a local one
    with FakeHub(build_fake_dataset(tmp_path / "fake-repo")) as server:
        yield server


@pytest.fixture()
def mapillary():
    entities, files = gss_sample_entities(SAMPLE)
    with PhotoMapillary(entities, files, token=TOKEN) as server:
        yield server


def _env(mapillary, tmp_path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MAPILLARY_GRAPH_URL": mapillary.url,
            "MAPILLARY_TILES_URL": mapillary.url, "MAPILLARY_ACCESS_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0",
            "CITY_AUDIT_TEXT_CACHE": str(tmp_path / "text-cache"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _fast_options(concurrency: int) -> list[str]:
    options = {**FAST, "concurrency": concurrency}
    return [arg for key, value in options.items() for arg in ("-m", f"{key}={value}")]


@pytest.mark.timeout(120)
def test_plan_reads_every_label_file_once_and_counts_what_it_skips(hub, tmp_path, capsys):
    args = ["gss", "--plan", "--attributes", "all", "--hf-endpoint", hub.url, "--hf-cache", str(tmp_path / "hf"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert set(hub.gets) == {f"manual_labels/{s}/{a}.csv" for a in ATTRIBUTES for s in ("train", "test")} | {ID_MAP_FILE}
    assert all(n == 1 for n in hub.gets.values())
    assert "skipped 200 rows: KartaView image" in out  # 25 KartaView uuids x 8 attributes, train + test
    assert "26 distinct Mapillary images" in out and "17 file(s) downloaded now" in out
    assert "| weather | 26 | 52 |" in out and "| glare | 25 | 50 |" in out  # per attribute: images, requests
    gets, heads = sum(hub.gets.values()), sum(hub.heads.values())
    assert main(args) == 0  # everything from the huggingface_hub cache: not one request
    assert (sum(hub.gets.values()), sum(hub.heads.values())) == (gets, heads)
    assert "0 file(s) downloaded now" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_missing_files_and_columns_are_one_clear_line(hub, tmp_path, capsys):
    common = ["--plan", "--hf-endpoint", hub.url, "--hf-cache", str(tmp_path / "hf"), "--out", str(tmp_path / "o")]
    del hub.files["manual_labels/test/quality.csv"]
    assert main(["gss", "--attributes", "quality", *common]) == 2
    assert "has no file 'manual_labels/test/quality.csv'; check --revision" in capsys.readouterr().err
    hub.files["manual_labels/train/reflection.csv"] = b"uuid,city\nabc,Stuttgart\n"
    assert main(["gss", "--attributes", "reflection", *common]) == 2
    assert "needs columns 'uuid' and 'reflection'" in capsys.readouterr().err
    assert main(["gss", "--attributes", "glare", *common]) == 0
    assert f"commit {COMMIT[:12]}" in capsys.readouterr().out  # the revision the labels came from


@pytest.mark.timeout(400)
def test_end_to_end_killed_and_rerun_resumes_without_refetching(hub, mapillary, tmp_path):
    out = tmp_path / "out"
    attributes = ["pano_status", "weather", "view_direction"]  # view_direction's ids come from the id table
    command = [sys.executable, "-m", "flows.cli", "gss", "--attributes", *attributes, "--out", str(out),
               "--hf-endpoint", hub.url, "--hf-cache", str(tmp_path / "hf"), "--model", "tiny", "--device", "cpu",
               "--epochs", "3", "--baseline-epochs", "3", "--batch-size", "8", "--num-workers", "0", "--quiet"]
    env = _env(mapillary, tmp_path)

    mapillary.latency_s = 0.3  # slow enough to kill it half way through the images
    first = subprocess.Popen([*command, *_fast_options(1)], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    store = out / "dataset" / "img"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(store.glob("*.jpg"))) < 4 and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    fetched_before = len(list(store.glob("*.jpg")))
    assert 4 <= fetched_before < 25, first.stdout.read().decode()[-2000:]
    label_gets = Counter(hub.gets)

    mapillary.latency_s = 0.0
    second = subprocess.run([*command, *_fast_options(4)], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert hub.gets == label_gets  # the labels came from the cache
    served = mapillary.thumbs_served
    assert len(served) == 25 and sum(served.values()) <= 25 + 1  # at most the one in flight at the kill, twice
    report = json.loads((out / "gss-report.json").read_text())
    assert report["images"]["present"] == 25 and report["images"]["failed"] == 1  # the deleted image
    assert sum(report["images"]["failure_reasons"].values()) == 1
    assert report["dataset_rows"]["weather"]["train"]["image_missing"] == 1  # its row left the training file
    assert report["skipped_rows"] == {"KartaView image: not fetchable through the Mapillary client": 75}
    kept = report["dataset_rows"]["view_direction"]
    assert kept["train"]["kept"] + kept["test"]["kept"] == 25
    table = (out / "gss-comparison.md").read_text()
    for attribute in attributes:
        assert f"| {attribute} |" in table
        evaluation = json.loads((out / "evaluation" / f"{attribute}-evaluation.json").read_text())
        assert {"zero_r", "zeroshot", "linear_probe", "clip_adapter", "coop", "mhadapter"} <= set(evaluation["methods"])
        assert evaluation["n"] == report["dataset_rows"][attribute]["test"]["kept"] > 0
        assert (out / "heads" / f"{attribute}.safetensors").is_file()
    assert "| pano_status | " in table and "0.9940" in table  # the paper's number beside ours
    assert "UNTRAINED" in second.stdout and "1 label rows dropped: their image could not be fetched" in second.stdout
    assert report["backbone"]["images_encoded_now"] == 25  # one backbone pass per image, for all three heads

    requests_before, entity_before = sum(mapillary.requests.values()), mapillary.requests["entity"]
    third = subprocess.run([*command, *_fast_options(4)], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert mapillary.requests["thumbs"] == sum(served.values()) and hub.gets == label_gets
    assert sum(mapillary.requests.values()) - requests_before == mapillary.requests["entity"] - entity_before == 1
    # only the image that failed is asked for again (one entity request: it does not exist)
    rerun = json.loads((out / "gss-report.json").read_text())
    assert rerun["backbone"]["images_encoded_now"] == 0  # every feature from the content-hash cache
    assert "all features from the cache" in third.stdout
    assert (out / "gss-comparison.md").read_text() == table  # same data, same seeds: the same numbers
