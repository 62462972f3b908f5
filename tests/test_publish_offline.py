"""map.html opens offline in headless Chromium; every artefact carries the run's credits; empty runs publish.

The Chromium tests start Debian's ``chromium`` with every network request routed to a dead proxy
and host names unresolvable, open ``map.html`` from disk, and read the DOM after the scripts ran,
the console messages Chromium logs to stderr, and a screenshot. They skip only where no chromium
binary is installed.
"""

from __future__ import annotations

import json
import re
from html import unescape as html_unescape
import shutil
import sqlite3
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import duckdb
import pytest
from PIL import Image

from classify.schema import ATTRIBUTES
from warehouse.build import build_audit_database
from warehouse.publish import publish_run
from contracts.tables import IMAGES, SEGMENTS, empty_failures
from warehouse.styles import class_colours

CLASSES = {name: a.classes for name, a in ATTRIBUTES.items()}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
OFFLINE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                 '--host-resolver-rules=MAP * ~NOTFOUND', "--enable-logging=stderr", "--v=0",
                 "--virtual-time-budget=5000", "--window-size=1200,900"]


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run headless Chromium, offline, on a file; the console messages are the stderr ``CONSOLE`` lines."""
    return subprocess.run([CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run["out"])


@pytest.fixture(scope="module")
def credited(run_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """The sample run published again with the attribution list of its run.json, as the flow should pass it."""
    attribution = json.loads((run_dir / "run.json").read_text())["attribution"]
    out = tmp_path_factory.mktemp("credited")
    publish_run(run_dir / "audit.duckdb", out, CLASSES, metric_crs="EPSG:32632", run_id="credited", model_trained=False,
                attribution=attribution)
    return out, attribution


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory) -> Path:
    """A run with no images and no road segments, built and published."""
    out = tmp_path_factory.mktemp("empty-run")
    segments = gpd.GeoDataFrame({c: pd.Series(dtype="object") for c in SEGMENTS.names if c != "geometry"},
                                geometry=gpd.GeoSeries([], crs="EPSG:4326"))
    predictions = pa.table({"image_id": pa.array([], pa.string()), "attribute": pa.array([], pa.string()),
                            "label": pa.array([], pa.string()), "confidence": pa.array([], pa.float64()),
                            "method": pa.array([], pa.string()), "model_id": pa.array([], pa.string())})
    build_audit_database(out / "audit.duckdb", images=IMAGES.empty_table().to_pandas(), segments=segments,
                         predictions=predictions, failures=empty_failures(), run_id="empty", metric_crs="EPSG:32632")
    publish_run(out / "audit.duckdb", out, CLASSES, metric_crs="EPSG:32632", run_id="empty", model_trained=False)
    return out


def embedded_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="city-audit-data">(.*?)</script>', text, re.S).group(1))


def test_map_html_is_self_contained_with_data_once(run_dir):
    text = (run_dir / "map.html").read_text(encoding="utf-8")
    assert not re.search(r'<script[^>]+src=|<link[^>]+href=', text), "the page must not load scripts or styles from anywhere"
    assert "Leaflet 1.9.4" in text and "BSD 2-Clause License" in text and "UNTRAINED MODEL" in text
    data = embedded_data(run_dir / "map.html")
    segments = gpd.read_parquet(run_dir / "segments.parquet")
    assert data["segments"]["n"] == len(segments) and sorted(data["segments"]["segment_id"]) == sorted(segments["segment_id"])
    some = segments["segment_id"].iloc[0]
    assert text.count(f'"{some}"') == 1, "each segment is embedded once"
    assert [a["name"] for a in data["attributes"]] == list(CLASSES)
    assert data["attributes"][0]["colours"] == list(class_colours(CLASSES["weather"]).values())
    assert data["untrained"] is True and data["images"]["n"] == len(gpd.read_parquet(run_dir / "images.parquet"))
    assert any(t for t in data["images"]["thumb"]), "the image store lies beside the map: thumbnails are linked"


@needs_chromium
def test_map_html_draws_offline_in_chromium(run_dir, tmp_path):
    dom = chromium(run_dir / "map.html", tmp_path / "profile", "--dump-dom")
    assert console_messages(dom.stderr) == []
    assert 'data-ready="1"' in dom.stdout
    n_segments = len(gpd.read_parquet(run_dir / "segments.parquet"))
    assert f'data-segments-drawn="{n_segments}"' in dom.stdout and n_segments > 0
    legend = re.search(r'<div[^>]*id="legend".*?</div>\s*</div>', dom.stdout, re.S)
    assert legend and "weather" in legend.group(0) and "no images" in legend.group(0)
    assert "leaflet-control-layers" in dom.stdout and "lighting condition (dominant label)" in dom.stdout
    assert 'id="untrained-banner"' in dom.stdout and "OpenStreetMap contributors" in dom.stdout
    shot = tmp_path / "shot.png"
    chromium(run_dir / "map.html", tmp_path / "profile", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in class_colours(CLASSES["weather"]).values()]
    drawn = sum(int((np.abs(pixels - np.array(c)).sum(axis=1) < 30).sum()) for c in colours)
    assert drawn > 500, f"only {drawn} pixels in the weather class colours: the segment layer was not drawn"


@needs_chromium
def test_map_html_clicks_open_segment_and_image_popups(run_dir, tmp_path):
    """Clicks at a segment's vertex and at an image (on the page's own map object) open their popups."""
    data = embedded_data(run_dir / "map.html")
    segment_xy = np.cumsum(np.array(data["segments"]["xy"]).reshape(-1, 2), axis=0) / 1e6
    image_xy = np.cumsum(np.array(data["images"]["xy"]).reshape(-1, 2), axis=0) / 1e6
    starts = np.concatenate([[0], np.cumsum(data["segments"]["nv"])[:-1]])
    first_edge = np.linalg.norm(segment_xy[starts + 1] - segment_xy[starts], axis=1)  # vertices are shared at junctions:
    lonely = max((i for i in range(data["segments"]["n"]) if data["segments"]["n_images"][i] == 0),  # click mid-edge
                 key=lambda i: first_edge[i])
    vertex = (segment_xy[starts[lonely]] + segment_xy[starts[lonely] + 1]) / 2
    gaps = np.linalg.norm(image_xy[:, None] - image_xy[None], axis=2) + np.eye(len(image_xy)) * 1e9
    alone = int(np.argmax(gaps.min(axis=1)))  # the image farthest from any other
    click = """<script>
    (function () {
      var map = window.cityAuditMap, out = [];
      [[%f, %f], [%f, %f]].forEach(function (lonlat) {
        var latlng = L.latLng(lonlat[1], lonlat[0]);
        map.fire("click", {latlng: latlng, containerPoint: map.latLngToContainerPoint(latlng)});
        var popups = document.querySelectorAll(".leaflet-popup-content");  // a closed one fades out for 200 ms
        out.push(popups.length ? popups[popups.length - 1].textContent : "no popup");
      });
      document.body.setAttribute("data-popups", JSON.stringify(out));
    })();
    </script></body>""" % (*vertex, *image_xy[alone])
    page = tmp_path / "map.html"
    page.write_text((run_dir / "map.html").read_text(encoding="utf-8").replace("</body>", click), encoding="utf-8")
    dom = chromium(page, tmp_path / "profile", "--dump-dom")
    assert console_messages(dom.stderr) == []
    popups = json.loads(html_unescape(re.search(r'data-popups="([^"]*)"', dom.stdout).group(1)))
    assert data["segments"]["segment_id"][lonely] in popups[0] and "no images" in popups[0], popups[0]
    assert data["images"]["image_id"][alone] in popups[1] and "captured" in popups[1], popups[1]


@needs_chromium
def test_an_empty_run_gives_an_empty_map_that_says_why(empty_run, tmp_path):
    dom = chromium(empty_run / "map.html", tmp_path / "profile", "--dump-dom")
    assert console_messages(dom.stderr) == []
    assert 'data-ready="1"' in dom.stdout and 'data-segments-drawn="0"' in dom.stdout
    note = re.search(r'<div id="empty-note"([^>]*)>(.*?)</div>', dom.stdout, re.S)
    assert note and "hidden" not in note.group(1) and "no road segments and no images" in note.group(2)


def test_an_empty_run_publishes_every_output(empty_run):
    for name in ("segments.parquet", "images.parquet", "segments.gpkg", "coverage.tif", "map.png", "map.html", "report.md"):
        assert (empty_run / name).stat().st_size > 0, name
    assert len(gpd.read_parquet(empty_run / "segments.parquet")) == 0
    report = (empty_run / "report.md").read_text()
    assert "| images | 0 |" in report and "**Empty run.**" in report
    assert "- no images from source unknown: the image source found no image in this bbox" in report


def test_an_empty_run_report_names_each_source_and_the_failures(empty_run, tmp_path):
    from warehouse.db import connect
    from warehouse.report import empty_run_causes, write_report

    with connect(empty_run / "audit.duckdb", read_only=True) as con:
        causes = empty_run_causes(con, images=0, segments=0, matched=0, max_distance_m=25,
                                  sources={"images": "sample", "roads": "sample"})
        report = write_report(con, tmp_path / "report.md", run_id="empty", model_trained=False, max_distance_m=25,
                              outputs={}, sources={"images": "mapillary", "roads": "/data/berlin.osm.pbf"}).read_text()
    assert causes[0].startswith("no images from source sample: the bundled sample's 19 images lie within 9.1621,")
    assert causes[1].startswith("no road segments from roads sample: the bundled sample's 190 road segments")
    assert "- no images from source mapillary: Mapillary has no image in this bbox" in report
    assert "- no road segments from roads /data/berlin.osm.pbf: the roads file 'berlin.osm.pbf' has no road line" in report

    con = duckdb.connect()
    con.execute("CREATE TABLE failures (item_id VARCHAR, stage VARCHAR, reason VARCHAR)")
    con.execute("INSERT INTO failures VALUES ('1', 'discover', 'outside bbox'), ('2', 'discover', 'outside bbox'), "
                "('3', 'download', 'truncated JPEG')")
    failed = empty_run_causes(con, images=0, segments=5, matched=0, max_distance_m=25, sources={"images": "folder"})
    assert failed == ["no images: all 3 discovered item(s) failed (most frequent: 2 x discover: outside bbox; "
                      "1 x download: truncated JPEG); see `failures` in `run.json`"]
    assert empty_run_causes(con, images=4, segments=5, matched=0, max_distance_m=25) == [
        "none of the 4 images lies within 25 m of a road segment (see `unmatched_images` in `audit.duckdb`)"]
    assert empty_run_causes(con, images=4, segments=5, matched=1, max_distance_m=25) == []


def test_every_artefact_carries_the_run_attribution(credited):
    out, attribution = credited
    assert any("Mapillary" in a for a in attribution) and any("OpenStreetMap" in a for a in attribution)
    report = (out / "report.md").read_text(encoding="utf-8")
    html = (out / "map.html").read_text(encoding="utf-8")
    png_credit = Image.open(out / "map.png").text["Copyright"]
    with sqlite3.connect(out / "segments.gpkg") as db:
        metadata = "\n".join(row[0] for row in db.execute("SELECT metadata FROM gpkg_metadata"))
    for line in attribution:
        assert f"- {line}" in report, line
        assert line in embedded_data(out / "map.html")["attribution"] and json.dumps(line, ensure_ascii=False)[1:-1] in html
        assert line in png_credit, line
        assert line in metadata or line.replace("&", "&amp;") in metadata, line


def test_the_flow_run_credits_mapillary_and_openstreetmap(run_dir):
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    credits = embedded_data(run_dir / "map.html")["attribution"] + [Image.open(run_dir / "map.png").text["Copyright"]]
    for text in [report, *credits[-1:], " ".join(credits)]:
        assert "Mapillary" in text and "OpenStreetMap" in text


def test_map_html_stays_under_50_mb_for_100k_segments(tmp_path):
    """5,000 synthetic 4-vertex segments with all 8 attributes: at most 250 bytes a segment (100,000 -> 25 MB).

    benchmarks/map_html.py measures the full 100,000 and how long Chromium takes to open them."""
    import shapely

    from warehouse.map_html import write_map_html

    n, rng = 5_000, np.random.default_rng(0)
    start = np.stack([9.0 + rng.random(n) * 0.3, 48.7 + rng.random(n) * 0.2], -1)
    lines = shapely.linestrings(np.stack([start + k * np.array([3e-4, 2e-4]) for k in range(4)], 1))
    columns = {"segment_id": [f"osm:{100_000_000 + i}:{i % 7}" for i in range(n)], "name": ["Hauptstraße"] * n,
               "highway": ["residential"] * n, "length_m": rng.random(n) * 100, "n_images": rng.integers(1, 10, n)}
    for attribute, classes in CLASSES.items():
        columns[f"{attribute}_label"] = np.array(classes, dtype=object)[rng.integers(0, len(classes), n)]
        for field in ("share", "share_ci_low", "share_ci_high"):
            columns[f"{attribute}_{field}"] = rng.random(n)
    segments = gpd.GeoDataFrame(columns, geometry=lines, crs="EPSG:4326")
    images = gpd.GeoDataFrame({"image_id": ["1"]}, geometry=gpd.points_from_xy([9.1], [48.8]), crs="EPSG:4326")
    page = write_map_html(segments, images, tmp_path / "map.html", CLASSES, "weather", attribution=["credit"])
    per_segment = (page.stat().st_size - 200_000) / n  # less Leaflet and the page's script
    assert per_segment < 250, f"{per_segment:.0f} bytes a segment"
    data = embedded_data(page)["segments"]
    assert data["n"] == n and sum(data["nv"]) == 4 * n
    xy = np.cumsum(np.array(data["xy"]).reshape(-1, 2), axis=0) / 1e6  # delta-encoded 1e-6 degrees
    order = {segment_id: i for i, segment_id in enumerate(columns["segment_id"])}
    first = [order[s] for s in data["segment_id"]]
    starts = np.concatenate([[0], np.cumsum(data["nv"])[:-1]])
    assert np.abs(xy[starts] - shapely.get_coordinates(lines[first])[::4]).max() < 1e-6
    shares = np.array(data["attrs"]["weather"]["share"]) / 1000
    assert np.abs(shares - columns["weather_share"][first]).max() <= 5e-4


@needs_chromium
def test_the_map_benchmark_runs_small():
    """benchmarks/map_html.py end to end on a small synthetic city (the README's numbers come from its full size)."""
    import os
    import sys

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "benchmarks" / "map_html.py"), "--segments", "400", "--images", "80",
                             "--repeats", "1", "--burners", "0"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "400 segments, 80 images" in result.stdout and "bytes a segment" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| idle |"))
    drawn_s = float(row.split("|")[2].split()[0])
    assert 0 < drawn_s < 60, row
