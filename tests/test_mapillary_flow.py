"""End to end: ``city-audit run --source mapillary`` against the fake server, and the token never leaks."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import geopandas as gpd
import pytest

from flows import cli
from geo.mapillary import InvalidTokenError
from tests.fake_mapillary.fixtures import FAST, TOKEN, city, city_bbox, fake, mly_env  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration
CLI_OPTIONS = [f"-m{k}={v}" for k, v in FAST.items()]
# Fewer than the city's 90 images, to exercise --max-images; and below 64, where classify decodes
# in-process instead of starting DataLoader workers, which keeps this test quick.
MAX_IMAGES = 60


class Everything(logging.Handler):
    """Keeps every formatted log record of every logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def all_logs():
    handler = Everything()
    names = ["", "prefect", "httpx", "httpcore", "geo.mapillary"]
    levels = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)  # httpx logs request URLs at INFO/DEBUG
    yield handler
    for name in names:
        logging.getLogger(name).removeHandler(handler)
        logging.getLogger(name).setLevel(levels[name])


def files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


def test_city_audit_run_with_mapillary_end_to_end_and_no_token_anywhere(tmp_path, city, mly_env, prefect_harness,
                                                                          all_logs, capfd):
    roads = city.roads_geojson(tmp_path / "roads.geojson")
    out = tmp_path / "run"
    code = cli.main(["run", "--bbox", str(city_bbox(city)), "--source", "mapillary", "--roads", str(roads),
                     "--model", "tiny", "--device", "cpu", "--out", str(out), "--max-images", str(MAX_IMAGES),
                     *CLI_OPTIONS, "-mmin_spacing_m=0"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["images"] == MAX_IMAGES < len(city.images) and run["failures"] == []
    assert run["counts"]["matched_images"] == MAX_IMAGES  # every image lies on a street of the city
    assert run["parameters"]["imagery"]["source"] == "mapillary"
    assert any("CC BY-SA 4.0, © Mapillary contributors" in line for line in run["attribution"])
    images = gpd.read_parquet(out / "images.parquet")
    assert len(images) == MAX_IMAGES and set(images["source"]) == {"mapillary"}
    newest = sorted(city.images, key=lambda i: (-i["captured_at"], i["id"]))[:MAX_IMAGES]
    assert set(images["image_id"]) == {i["id"] for i in newest}  # --max-images keeps the most recent
    assert (out / "images" / "ATTRIBUTION.txt").is_file()
    assert mly_env.requests["tiles"] == 4  # one task per tile

    # a second run into a new folder reuses the cached per-tile discovery: no tile is asked again
    again = tmp_path / "again"
    assert cli.main(["run", "--bbox", str(city_bbox(city)), "--source", "mapillary", "--roads", str(roads),
                     "--model", "tiny", "--device", "cpu", "--out", str(again), "--max-images", "30",
                     *CLI_OPTIONS, "-mmin_spacing_m=0"]) == 0
    assert mly_env.requests["tiles"] == 4
    assert json.loads((again / "run.json").read_text())["counts"]["images"] == 30

    # the token is nowhere: logs, console, outputs, run.json, Prefect's database and result storage
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

    APILogHandler().flush()  # send queued logs to the database before scanning it
    captured = capfd.readouterr()
    assert all_logs.lines, "the log capture saw nothing; the scan below would prove nothing"
    assert any(mly_env.url in line for line in all_logs.lines)  # request URLs were logged, and redacted
    secret = TOKEN.split("|")[-1]
    for text in (*all_logs.lines, captured.out, captured.err):
        assert secret not in text
    assert files_containing(out, secret.encode()) == []
    assert files_containing(again, secret.encode()) == []
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    assert database.is_file() and files_containing(database.parent, secret.encode()) == []
    assert files_containing(Path(PREFECT_HOME.value()), secret.encode()) == []


def test_flow_with_an_invalid_token_stops_with_the_reason(tmp_path, city, mly_env, prefect_harness, monkeypatch):
    from flows.city_audit import audit

    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", "MLY|1|not-the-right-one")
    roads = city.roads_geojson(tmp_path / "roads.geojson")
    with pytest.raises(InvalidTokenError, match="190") as info:
        audit(bbox=str(city_bbox(city)), source="mapillary", roads=str(roads), model="tiny", device="cpu",
                   out=str(tmp_path / "run"), mapillary={**FAST, "discovery": "search"})
    assert "not-the-right-one" not in str(info.value)


def test_cli_refuses_mapillary_without_a_token_before_starting_prefect(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)
    roads = Path(__file__).parent / "data" / "pyrosm_test.osm.pbf"  # Berlin is outside the bundled sample's roads
    code = cli.main(["run", "--bbox", "13.37,52.52,13.38,52.53", "--source", "mapillary", "--roads", str(roads),
                     "--out", str(tmp_path)])
    assert code == 2
    assert "MAPILLARY_ACCESS_TOKEN" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_cli_refuses_bad_mapillary_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", TOKEN)
    code = cli.main(["run", "--bbox", "13.37,52.52,13.38,52.53", "--source", "mapillary", "-m", "panoramas=maybe"])
    assert code == 2 and "panoramas" in capsys.readouterr().err


def test_token_from_a_prefect_secret_block(tmp_path, city, prefect_harness, monkeypatch):
    from prefect.blocks.system import Secret

    from geo.mapillary import MapillarySource, MissingTokenError
    from geo.mapillary.options import resolve_token
    from tests.fake_mapillary import FakeMapillary

    block_token = "MLY|5|token-kept-in-a-secret-block"  # not TOKEN: the scan above must not find this one
    Secret(value=block_token).save("mapillary-test-token", overwrite=True)
    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)
    with FakeMapillary(city.images, token=block_token) as server:
        monkeypatch.setenv("MAPILLARY_GRAPH_URL", server.url)
        monkeypatch.setenv("MAPILLARY_TILES_URL", server.url)
        source = MapillarySource({**FAST, "token_secret": "mapillary-test-token"})
        result = source.ingest(city_bbox(city), tmp_path / "images", tmp_path / "m.sqlite", progress=False)
    assert len(result.images) == len(city.images) and result.failures.empty
    with pytest.raises(MissingTokenError, match="no-such-block"):
        resolve_token("no-such-block")
