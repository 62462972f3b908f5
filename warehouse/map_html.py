"""The interactive map ``map.html``: one self-contained file that opens from disk with no network.

Leaflet (vendored from npm, ``warehouse/vendor/leaflet``, BSD-2 licence notice kept) and the
page's own script (``map_html.js``) are inlined; the run's data is embedded once as columnar JSON
(coordinates rounded to 1e-6 degrees, labels as class indices), so a 100,000-segment run stays in
the tens of MB. Every attribute is a switchable layer (the segment lines are re-coloured, the
legend follows); images are points with their labels and, where the image store lies beside the
map, a thumbnail. An UNTRAINED banner shows when the model was untrained; the attribution control
lists every source. The OpenStreetMap background is an overlay that is off by default: it needs
the network, nothing else does.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from contracts.files import write_text_atomic
from contracts.notices import UNTRAINED_NOTE
from contracts.results import image_href
from warehouse.styles import NO_DATA_COLOUR, class_colours

LEAFLET_VERSION = "1.9.4"
VENDOR = Path(__file__).parent / "vendor" / "leaflet"
SCRIPT = Path(__file__).parent / "map_html.js"
COORD_DIGITS = 6

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<!-- Leaflet {leaflet_version} (https://leafletjs.com), vendored from npm; its licence: -->
<!--
{leaflet_licence}
-->
<style>
{leaflet_css}
</style>
<style>
html, body {{ height: 100%; margin: 0; font: 13px/1.35 system-ui, sans-serif; }}
#map {{ position: absolute; top: 0; bottom: 0; left: 0; right: 0; background: #f4f4f0; }}
#untrained-banner {{ position: absolute; z-index: 1000; top: 8px; left: 50%; transform: translateX(-50%);
  background: #b00020; color: #fff; padding: 6px 14px; border-radius: 4px; font-weight: 600; max-width: 60%; }}
#empty-note {{ position: absolute; z-index: 1000; top: 40%; left: 50%; transform: translateX(-50%);
  background: #fff; padding: 12px 18px; border: 1px solid #888; border-radius: 4px; max-width: 60%; }}
#title {{ position: absolute; z-index: 999; bottom: 40px; left: 8px; background: rgba(255,255,255,.85);
  padding: 4px 8px; border-radius: 4px; font-weight: 600; }}
.legend {{ background: #fff; padding: 6px 10px; border-radius: 4px; box-shadow: 0 1px 4px rgba(0,0,0,.3); }}
.legend h4 {{ margin: 0; }} .legend .sub {{ margin: 0 0 4px; color: #555; }} .legend .n {{ color: #777; }}
.legend .swatch {{ display: inline-block; width: 22px; height: 5px; margin-right: 6px; vertical-align: middle; }}
.legend .swatch.thin {{ height: 2px; }}
.legend .dot {{ display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: #000;
  margin: 0 13px 0 7px; vertical-align: middle; }}
table.popup th {{ text-align: left; padding-right: 8px; color: #444; }} img.thumb {{ max-width: 300px; margin-top: 6px; }}
</style>
</head>
<body>
<div id="map"></div>
{banner}
<div id="empty-note" hidden>{empty_note}</div>
<div id="title">{title}</div>
<script type="application/json" id="city-audit-data">{data}</script>
<script>
{leaflet_js}
</script>
<script>
{script}
</script>
</body>
</html>
"""


def _values(frame: gpd.GeoDataFrame, column: str, digits: int | None = None) -> list:
    """A column as a JSON-ready list (NaN/NA -> None, numbers rounded to ``digits``, times as ISO text)."""
    if column not in frame:
        return [None] * len(frame)
    series = frame[column]
    if pd.api.types.is_datetime64_any_dtype(series):
        series = series.map(lambda t: t.isoformat() if pd.notna(t) else None)
    elif digits is not None and pd.api.types.is_numeric_dtype(series):
        series = series.round(digits)
    return [None if (np.ndim(v) == 0 and pd.isna(v)) else (v.item() if isinstance(v, np.generic) else v)
            for v in series.tolist()]


def _class_index(frame: gpd.GeoDataFrame, column: str, classes: Sequence[str]) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(v, -1) for v in _values(frame, column)]


def _coords(geometries) -> list[list[float]]:
    """Each line's vertices as one flat ``[lon, lat, lon, lat, ...]`` list, rounded (multi-lines: parts joined)."""
    geoms = np.asarray(geometries, dtype=object)
    xy, index = shapely.get_coordinates(geoms, return_index=True)
    parts = np.split(np.round(xy, COORD_DIGITS), np.searchsorted(index, np.arange(1, len(geoms))))
    return [part.ravel().tolist() for part in parts] if len(geoms) else []


def map_data(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, attributes: Mapping[str, Sequence[str]], shown: str, *,
             attribution: Sequence[str], untrained: bool, title: str, image_store: Path | None = None) -> dict:
    """The JSON object ``map.html`` embeds: segments and images column by column, classes and colours."""
    segments, images = segments.to_crs("EPSG:4326"), images.to_crs("EPSG:4326")
    bounds = None
    if len(segments) or len(images):
        box = np.vstack([f.total_bounds for f in (segments, images) if len(f)])
        bounds = [[float(box[:, 1].min()), float(box[:, 0].min())], [float(box[:, 3].max()), float(box[:, 2].max())]]
    seg = {"n": len(segments), "coords": _coords(segments.geometry),
           **{c: _values(segments, c, 1 if c == "length_m" else None) for c in ("segment_id", "name", "highway", "length_m", "n_images")},
           "attrs": {a: {"label": _class_index(segments, f"{a}_label", classes), "share": _values(segments, f"{a}_share", 3),
                         "lo": _values(segments, f"{a}_share_ci_low", 3), "hi": _values(segments, f"{a}_share_ci_high", 3)}
                     for a, classes in attributes.items()}}
    thumbs = [None] * len(images)
    if image_store is not None and "path" in images:
        thumbs = [image_href(image_store, rel) for rel in _values(images, "path")]
    img = {"n": len(images), "lon": [round(float(g.x), COORD_DIGITS) for g in images.geometry],
           "lat": [round(float(g.y), COORD_DIGITS) for g in images.geometry],
           **{c: _values(images, c, 1 if c == "distance_m" else None)
              for c in ("image_id", "captured_at", "segment_id", "distance_m", "unmatched_reason")},
           "labels": {a: _class_index(images, f"{a}_label", classes) for a, classes in attributes.items()},
           "confidence": {a: _values(images, f"{a}_confidence", 3) for a in attributes}, "thumb": thumbs}
    return {"title": title, "untrained": untrained, "attribution": list(attribution), "shown": shown,
            "noDataColour": NO_DATA_COLOUR, "bounds": bounds, "empty": not (len(segments) or len(images)),
            "attributes": [{"name": a, "title": a.replace("_", " "), "layer": f"{a.replace('_', ' ')} (dominant label)",
                            "classes": list(classes),
                            "colours": list(class_colours(classes).values())} for a, classes in attributes.items()],
            "segments": seg, "images": img}


def write_map_html(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, path: str | os.PathLike,
                   attributes: Mapping[str, Sequence[str]], shown: str, title: str = "", *,
                   attribution: Sequence[str] = (), untrained: bool = False, image_store: str | os.PathLike | None = None) -> Path:
    """Write the self-contained offline ``map.html``; returns its path.

    ``shown`` is the attribute coloured at start; ``attribution`` the credit lines (the run's list);
    ``untrained`` adds the banner; ``image_store`` (a folder beside the map) enables thumbnails.
    """
    path = Path(path)
    store = Path(image_store) if image_store is not None else None
    data = map_data(segments, images, attributes, shown, attribution=attribution, untrained=untrained,
                    title=title or "city-audit", image_store=store if store is not None and store.is_dir() else None)
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    payload = payload.replace("<", "\\u003c")  # never "</script>" inside the data block
    banner = f'<div id="untrained-banner">{html.escape(UNTRAINED_NOTE)}</div>' if untrained else ""
    page = PAGE.format(
        title=html.escape(title or "city-audit"), leaflet_version=LEAFLET_VERSION,
        leaflet_licence=(VENDOR / "LICENSE").read_text(encoding="utf-8").replace("--", "- -"),
        leaflet_css=(VENDOR / "leaflet.css").read_text(encoding="utf-8"), banner=banner,
        empty_note="This run has no road segments and no images, so the map is empty. "
                   "<code>report.md</code> and <code>run.json</code> say why (bbox, source, failures).",
        data=payload, leaflet_js=(VENDOR / "leaflet.js").read_text(encoding="utf-8"),
        script=SCRIPT.read_text(encoding="utf-8"))
    return write_text_atomic(path, page)
