"""The GeoPackage, styles, raster and map picture as GIS software reads them (GDAL 3.6's ogrinfo where installed)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from PIL import Image

from classify.schema import ATTRIBUTES
from warehouse.maps import nice_length
from warehouse.styles import class_colours

CLASSES = {name: a.classes for name, a in ATTRIBUTES.items()}
OGRINFO = shutil.which("ogrinfo")


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run["out"])


def test_geopackage_is_version_1_2(run_dir):
    with sqlite3.connect(run_dir / "segments.gpkg") as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
        times = [row[0] for row in db.execute("SELECT update_time FROM layer_styles")]
    assert times and all(len(t) == 24 and t[10] == "T" and t.endswith("Z") for t in times), times


def test_geopackage_reads_without_a_gdal_warning(run_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyogrio turns GDAL warnings into RuntimeWarning
        for layer in ("segments", "images", "layer_styles"):
            pyogrio.read_dataframe(run_dir / "segments.gpkg", layer=layer)
        info = pyogrio.read_info(run_dir / "segments.gpkg", layer="segments")
    assert "Mapillary" in info["dataset_metadata"]["ATTRIBUTION"]


@pytest.mark.skipif(OGRINFO is None, reason="no ogrinfo on PATH (Debian: apt-get install gdal-bin)")
def test_ogrinfo_opens_the_geopackage_with_no_warning(run_dir):
    result = subprocess.run([OGRINFO, "-al", "-so", str(run_dir / "segments.gpkg")], capture_output=True, text=True,
                            timeout=120, check=True)
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr
    assert "Layer name: segments" in result.stdout and "OpenStreetMap" in result.stdout


def test_images_layer_has_a_point_style(run_dir):
    root = ET.parse(run_dir / "styles" / "images.qml").getroot()
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "weather_label"
    assert {s.get("type") for s in renderer.find("symbols")} == {"marker"}
    assert [c.get("value") for c in renderer.find("categories")] == [*CLASSES["weather"], ""]
    first = renderer.find("symbols")[0].find("layer/prop[@k='color']").get("v")
    red, green, blue = (int(class_colours(CLASSES["weather"])["clear"][i:i + 2], 16) for i in (1, 3, 5))
    assert first == f"{red},{green},{blue},255"
    with sqlite3.connect(run_dir / "segments.gpkg") as db:  # the same style is the images layer's default in QGIS
        stored = db.execute("""SELECT styleQML, useAsDefault, f_geometry_column FROM layer_styles
                               WHERE f_table_name = 'images'""").fetchall()
        geometry_column = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = 'images'").fetchone()[0]
    assert stored == [((run_dir / "styles" / "images.qml").read_text(encoding="utf-8"), 1, geometry_column)]


def test_coverage_raster_tells_no_images_from_outside(run_dir):
    with rasterio.open(run_dir / "coverage.tif") as src:
        count = src.read(1)
        mask = src.read_masks(1)
    inside, no_images = mask == 255, np.isnan(count)
    assert (inside & ~no_images).any() and (inside & no_images).any(), "roads without images are inside the area"
    assert (~inside).any() and no_images[~inside].all(), "outside the area there is never an image"
    assert inside[~no_images].all()
    qml = ET.parse(run_dir / "coverage.qml").getroot()
    renderer = qml.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "1"
    assert float(renderer.get("classificationMax")) == np.nanmax(count)


def test_map_png_is_one_sheet_with_credits_and_the_warning(run_dir):
    picture = Image.open(run_dir / "map.png")
    assert picture.width > picture.height > 800  # two rows of four panels
    assert "UNTRAINED" in picture.text["Title"] and "OpenStreetMap" in picture.text["Copyright"]
    pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3).astype(int)
    for cls, colour in class_colours(CLASSES["weather"]).items():
        if cls == "clear":
            target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
            assert (np.abs(pixels - target).sum(axis=1) < 20).sum() > 100


@pytest.mark.parametrize("span, expected", [(1234.0, 200.0), (90.0, 10.0), (5000.0, 1000.0), (26000.0, 5000.0), (3.0, 1.0)])
def test_scale_bar_lengths_are_round(span, expected):
    assert nice_length(span) == expected


# --- map.png: basemap when tiles answer, the road network alone (at once) when they do not --------------------

BASEMAP_CLASSES = {"weather": CLASSES["weather"]}
TILE_RGB = (200, 0, 200)  # a colour no style uses


def _small_run():
    import geopandas as gpd
    from shapely.geometry import LineString, Point

    lines = [LineString([(9.170, 48.770), (9.172, 48.771)]), LineString([(9.172, 48.771), (9.174, 48.773)]),
             LineString([(9.168, 48.772), (9.170, 48.770)])]
    segments = gpd.GeoDataFrame({"segment_id": ["a", "b", "c"], "name": ["Hauptstraße", "Hauptstraße", "Nebenweg"],
                                 "highway": ["primary", "primary", "residential"],
                                 "weather_label": ["clear", "rainy", None]}, geometry=lines, crs="EPSG:4326")
    images = gpd.GeoDataFrame({"image_id": ["1"]}, geometry=[Point(9.171, 48.7705)], crs="EPSG:4326")
    return segments, images


@pytest.fixture()
def tile_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving PNG tiles as files in the XYZ layout ``<z>/<x>/<y>.png``."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import mercantile

    from warehouse.maps import basemap_tiles, sheet_extent_m

    segments, images = _small_run()
    needed, _ = basemap_tiles(sheet_extent_m(segments.to_crs("EPSG:32632"), images.to_crs("EPSG:32632")), "EPSG:32632")
    assert 0 < len(needed) <= 24
    for tile in {mercantile.Tile(t.x + dx, t.y + dy, t.z) for t in needed for dx in (-1, 0, 1) for dy in (-1, 0, 1)}:
        path = tmp_path / "tiles" / str(tile.z) / str(tile.x) / f"{tile.y}.png"  # the sheet's tiles and a margin
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (256, 256), TILE_RGB).save(path)
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path / "tiles")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{z}}/{{x}}/{{y}}.png", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def silent_server():
    """A TCP port that accepts connections and never answers: tiles that hang, as on a bad network."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/{{z}}/{{x}}/{{y}}.png"
    finally:
        listener.close()


def _tile_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    blended = np.array([0.55 * c + 0.45 * 255 for c in TILE_RGB])  # the basemap is drawn at alpha 0.55 over white
    return int((np.abs(pixels - blended).sum(axis=1) < 12).sum())


def test_map_png_draws_the_basemap_when_tiles_answer(tile_server, tmp_path):
    from warehouse.maps import write_map_png

    url, requests = tile_server
    segments, images = _small_run()
    png = write_map_png(segments, images, tmp_path / "map.png", BASEMAP_CLASSES, "EPSG:32632", attribution=["credit"],
                        basemap=url, basemap_timeout_s=5)
    picture = Image.open(png)
    assert picture.text["Basemap"] == url and requests, "the tiles were fetched from the local server"
    assert all(r.endswith(".png") for r in requests)
    assert _tile_pixels(png) > 20_000, "the basemap colour is under the roads"
    assert "basemap" in picture.text["Copyright"]


def test_map_png_without_reachable_tiles_is_drawn_at_once_without_basemap(silent_server, tmp_path):
    import time

    from warehouse.maps import fetch_basemap, write_map_png

    start = time.monotonic()
    backdrop = fetch_basemap((512_000.0, 5_401_000.0, 513_000.0, 5_402_000.0), "EPSG:32632", silent_server, timeout_s=1.0)
    waited = time.monotonic() - start
    assert backdrop.image is None and backdrop.note.startswith("none (") and waited < 2.5, (waited, backdrop.note)
    refused = "http://127.0.0.1:9/{z}/{x}/{y}.png"  # nothing listens on the discard port: refused at once
    segments, images = _small_run()
    png = write_map_png(segments, images, tmp_path / "map.png", BASEMAP_CLASSES, "EPSG:32632", attribution=["credit"],
                        basemap=refused, basemap_timeout_s=1.0)
    assert Image.open(png).text["Basemap"].startswith("none (") and _tile_pixels(png) == 0
    assert fetch_basemap((0.0, 0.0, 1.0, 1.0), "EPSG:32632", "off").note == "off"


def test_street_names_for_the_main_streets_without_overlap():
    from warehouse.maps import street_labels

    segments, _ = _small_run()
    metric = segments.to_crs("EPSG:32632")
    labels = street_labels(metric, char_width_m=5.0)
    assert [name for name, *_ in labels] == ["Hauptstraße", "Nebenweg"], "primary before residential"
    name, x, y, angle = labels[0]
    longest = metric[metric["name"] == name].geometry.length.idxmax()
    assert metric.geometry[longest].distance(__import__("shapely").Point(x, y)) < 1e-6 and -90 <= angle <= 90
    assert len(street_labels(metric, limit=1, char_width_m=5.0)) == 1
    crowded = street_labels(metric, char_width_m=500.0)  # huge letters: the second name would overlap the first
    assert [name for name, *_ in crowded] == ["Hauptstraße"]
