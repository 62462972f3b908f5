"""The interactive map ``map.html``: one self-contained file that opens from disk with no network.

Leaflet (vendored from npm, ``warehouse/vendor/leaflet``, BSD-2 licence notice kept) and the
page's own script (``map_html.js``) are inlined; the run's data is embedded once as compact
columnar JSON (``map_data``: delta-encoded integer coordinates, word lists, class indices), about
200 bytes a segment. The script draws all segments and images on one canvas each (a Leaflet layer
of its own, one stroke per colour, culled to the view) instead of one Leaflet object per feature,
so a 100,000-segment map opens in a few seconds (``benchmarks/map_html.py``). Every attribute is a
switchable layer (the segment lines are re-coloured, the legend follows); images are points with
their labels and, where the image store lies beside the map, a thumbnail. An UNTRAINED banner shows when the model was untrained; the attribution control
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


def _scaled(frame: gpd.GeoDataFrame, column: str, factor: float) -> list[int]:
    """A numeric column as integers ``round(value × factor)``, -1 where missing (shares: per mille)."""
    if column not in frame:
        return [-1] * len(frame)
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    return np.where(np.isnan(values), -1, np.round(np.nan_to_num(values) * factor)).astype(np.int64).tolist()


def _class_index(frame: gpd.GeoDataFrame, column: str, classes: Sequence[str]) -> list[int]:
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(v, -1) for v in _values(frame, column)]


def _dictionary(frame: gpd.GeoDataFrame, column: str) -> tuple[list[str], list[int]]:
    """A text column as its distinct values (sorted) and one index per row (-1 where missing)."""
    values = _values(frame, column)
    words = sorted({v for v in values if v is not None}, key=str)
    index = {w: i for i, w in enumerate(words)}
    return words, [index.get(v, -1) if v is not None else -1 for v in values]


def _delta_coords(geometries) -> tuple[list[int], list[int]]:
    """Vertices as integers of 1e-6 degrees, delta-encoded along all features, and the vertex count per feature.

    ``[lon0, lat0, dlon1, dlat1, ...]``: the first pair absolute, every further pair the step from
    the vertex before (across features too, so features in spatial order give small numbers).
    Multi-part lines are joined part after part.
    """
    geoms = np.asarray(geometries, dtype=object)
    if not len(geoms):
        return [], []
    xy, index = shapely.get_coordinates(geoms, return_index=True)
    counts = np.bincount(index, minlength=len(geoms))
    ints = np.round(xy * 10 ** COORD_DIGITS).astype(np.int64)
    return np.diff(ints, axis=0, prepend=np.zeros((1, 2), np.int64)).ravel().tolist(), counts.tolist()


def _spatial_order(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Rows along a Hilbert curve (small coordinate deltas), the index reset."""
    if len(frame) > 1:
        frame = frame.iloc[np.argsort(frame.hilbert_distance().to_numpy(), kind="stable")]
    return frame.reset_index(drop=True)


def map_data(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, attributes: Mapping[str, Sequence[str]], shown: str, *,
             attribution: Sequence[str], untrained: bool, title: str, image_store: Path | None = None) -> dict:
    """The JSON object ``map.html`` embeds: segments and images column by column, classes and colours.

    Compact by construction (about 200 bytes a segment): rows in Hilbert order, coordinates as
    delta-encoded integers of 1e-6 degrees (``xy``, ``nv`` vertices per feature), texts that repeat
    (street names, road classes, reasons) as indices into a word list, labels as class indices,
    shares and confidences as integers per mille, lengths in whole metres, an image's segment as the
    segment's row number; -1 stands for a missing value in every integer column.
    """
    segments, images = _spatial_order(segments.to_crs("EPSG:4326")), _spatial_order(images.to_crs("EPSG:4326"))
    bounds = None
    if len(segments) or len(images):
        box = np.vstack([f.total_bounds for f in (segments, images) if len(f)])
        bounds = [[float(box[:, 1].min()), float(box[:, 0].min())], [float(box[:, 3].max()), float(box[:, 2].max())]]
    xy, nv = _delta_coords(segments.geometry)
    names, name_index = _dictionary(segments, "name")
    highways, highway_index = _dictionary(segments, "highway")
    seg = {"n": len(segments), "xy": xy, "nv": nv, "segment_id": _values(segments, "segment_id"),
           "names": names, "name": name_index, "highways": highways, "highway": highway_index,
           "length_m": _scaled(segments, "length_m", 1), "n_images": _scaled(segments, "n_images", 1),
           "attrs": {a: {"label": _class_index(segments, f"{a}_label", classes),
                         "share": _scaled(segments, f"{a}_share", 1000), "lo": _scaled(segments, f"{a}_share_ci_low", 1000),
                         "hi": _scaled(segments, f"{a}_share_ci_high", 1000)}
                     for a, classes in attributes.items()}}
    thumbs = [None] * len(images)
    if image_store is not None and "path" in images:
        thumbs = [image_href(image_store, rel) for rel in _values(images, "path")]
    row = {segment_id: i for i, segment_id in enumerate(seg["segment_id"])}
    reasons, reason_index = _dictionary(images, "unmatched_reason")
    image_xy, _ = _delta_coords(images.geometry)
    img = {"n": len(images), "xy": image_xy, "image_id": _values(images, "image_id"),
           "captured_at": _values(images, "captured_at"),
           "segment": [row.get(v, -1) if v is not None else -1 for v in _values(images, "segment_id")],
           "distance_dm": _scaled(images, "distance_m", 10), "reasons": reasons, "reason": reason_index,
           "labels": {a: _class_index(images, f"{a}_label", classes) for a, classes in attributes.items()},
           "confidence": {a: _scaled(images, f"{a}_confidence", 1000) for a in attributes},
           "thumb": thumbs}
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
