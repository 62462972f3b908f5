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
