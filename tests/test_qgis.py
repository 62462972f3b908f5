"""QGIS (the system's QGIS 3.22 Python, headless) opens the sample run's GeoPackage and raster styled, with no warning.

The test runs a small script with ``/usr/bin/python3`` (QGIS's own Python, ``QT_QPA_PLATFORM=offscreen``)
that loads the ``segments`` and ``images`` layers of ``segments.gpkg`` and ``coverage.tif`` with
``coverage.qml``, reports each layer's validity and renderer, every QGIS message-log entry, and
renders the layers to PNGs. GDAL prints its warnings on stderr (``Warning 1: ...``): those count too.
It skips only where QGIS's Python bindings are not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classify.schema import ATTRIBUTES
from warehouse.styles import class_colours

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _qgis_available() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, timeout=60,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _qgis_available(),
    reason="QGIS is not installed (/usr/bin/python3 cannot import qgis.core); to run this test on Debian/Ubuntu: "
           "apt-get install qgis python3-qgis")

LOAD_SCRIPT = r'''
import json, os, sys
from qgis.core import (Qgis, QgsApplication, QgsCoordinateReferenceSystem, QgsMapRendererSequentialJob,
                       QgsMapSettings, QgsRasterLayer, QgsVectorLayer)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

gpkg, raster, qml, out = sys.argv[1:5]
app = QgsApplication([], False)
app.initQgis()
messages = []
QgsApplication.messageLog().messageReceived.connect(
    lambda message, tag, level: messages.append({"tag": tag, "level": int(level), "message": message}))


def describe(layer):
    renderer = layer.renderer()
    info = {"valid": layer.isValid(), "renderer": renderer.type() if renderer else None}
    if hasattr(renderer, "classAttribute"):
        info["attribute"] = renderer.classAttribute()
        info["categories"] = [c.value() for c in renderer.categories()]
    if hasattr(renderer, "band"):
        info["band"] = renderer.band()
    if isinstance(layer, QgsVectorLayer):
        info["features"] = layer.featureCount()
    return info


segments = QgsVectorLayer(gpkg + "|layername=segments", "segments", "ogr")
images = QgsVectorLayer(gpkg + "|layername=images", "images", "ogr")
coverage = QgsRasterLayer(raster, "coverage")
result = {"qgis": Qgis.QGIS_VERSION, "coverage_default": describe(coverage)}
note, loaded = coverage.loadNamedStyle(qml)
result.update(segments=describe(segments), images=describe(images), coverage=describe(coverage),
              coverage_style_loaded=bool(loaded), coverage_style_note=note)


def render(layers, path):
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    extent = settings.layerToMapCoordinates(segments, segments.extent())
    extent.scale(1.1)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(800, 600))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(path, "PNG")
    return [str(error.message) for error in job.errors()]


result["render_errors"] = render([images, segments], out + "/vector.png") + render([coverage], out + "/raster.png")
app.processEvents()
result["messages"] = messages
print("QGIS-RESULT " + json.dumps(result), flush=True)
os._exit(0)  # QgsApplication.exitQgis() can crash a standalone script at exit (SIGSEGV in 3.22): leave at once
'''
GDAL_DIAGNOSTIC = re.compile(r"^(Warning|ERROR) \d+: .*$", re.M)  # CPL's default handler writes these to stderr


def load_in_qgis(run: Path, work: Path) -> tuple[dict, list[str]]:
    """Run the load script on a run folder; returns its result and GDAL's stderr diagnostics."""
    work.mkdir(parents=True, exist_ok=True)
    script = work / "load_in_qgis.py"
    script.write_text(LOAD_SCRIPT, encoding="utf-8")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(work)}
    env.pop("PYTHONPATH", None)  # QGIS's Python with its own packages only
    completed = subprocess.run([str(SYSTEM_PYTHON), str(script), str(run / "segments.gpkg"), str(run / "coverage.tif"),
                                str(run / "coverage.qml"), str(work)], capture_output=True, text=True, timeout=240,
                               env=env, cwd=work)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("QGIS-RESULT "))
    return json.loads(line.removeprefix("QGIS-RESULT ")), [m.group(0) for m in GDAL_DIAGNOSTIC.finditer(completed.stderr)]


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run["out"])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)


def test_qgis_opens_the_run_styled_and_without_warnings(run_dir, tmp_path):
    result, gdal_diagnostics = load_in_qgis(run_dir, tmp_path)
    assert result["qgis"].startswith("3."), result["qgis"]
    assert gdal_diagnostics == [], gdal_diagnostics
    assert [m for m in result["messages"] if m["level"] >= 1] == [], result["messages"]  # Qgis.Warning = 1
    assert result["render_errors"] == []
    weather = list(ATTRIBUTES["weather"].classes)
    for layer in ("segments", "images"):  # their default styles come from the GeoPackage's layer_styles
        info = result[layer]
        assert info["valid"] and info["features"] > 0, info
        assert info["renderer"] == "categorizedSymbol" and info["attribute"] == "weather_label", info
        assert info["categories"] == [*weather, ""], info
    with sqlite3.connect(run_dir / "segments.gpkg") as db:
        assert result["segments"]["features"] == db.execute("SELECT count(*) FROM segments").fetchone()[0]
    assert result["coverage_default"]["renderer"] == "singlebandpseudocolor", "coverage.qml beside the tif is its default"
    assert result["coverage_style_loaded"] and result["coverage"]["renderer"] == "singlebandpseudocolor"
    assert result["coverage"]["band"] == 1
    vector, raster = _pixels(tmp_path / "vector.png"), _pixels(tmp_path / "raster.png")
    assert (np.abs(vector - 255).sum(axis=1) > 30).sum() > 0 and (np.abs(raster - 255).sum(axis=1) > 30).sum() > 0
    colours = [np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)]) for c in class_colours(weather).values()]
    assert sum(int((np.abs(vector - c).sum(axis=1) < 30).sum()) for c in colours) > 0, "class colours are drawn"


def test_the_warning_check_catches_what_qgis_3_22_warned_about(run_dir, tmp_path):
    """The same run with what was written before (GeoPackage 1.4, SQLite timestamps in ``layer_styles``): seen."""
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("segments.gpkg", "coverage.tif", "coverage.qml"):
        shutil.copy(run_dir / name, copy / name)
    with sqlite3.connect(copy / "segments.gpkg") as db:
        db.execute("PRAGMA user_version = 10400")
        db.execute("UPDATE layer_styles SET update_time = '2026-01-01 00:00:00'")
    _, gdal_diagnostics = load_in_qgis(copy, tmp_path / "work")
    assert any("update_time" in d for d in gdal_diagnostics), gdal_diagnostics  # GDAL checks GeoPackage datetimes
