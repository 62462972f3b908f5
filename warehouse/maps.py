"""The map picture ``map.png`` (matplotlib, headless): a small-multiples sheet, one panel per attribute.

Each panel colours road segments by the dominant label of one attribute with the class colours
of ``warehouse.styles`` (segments without images in grey; one matplotlib line collection per
colour) and shows the images as dots, over a contextily basemap when its tiles can be reached
(fetched once, with a short deadline: an offline machine gets the road network alone at once), with the names of the main streets along their longest segment. The sheet has metric axes
in km without offset notation, a scale bar, a north arrow, the UNTRAINED warning in the title
where it applies and the run's credit lines at the foot. The interactive map lives in
``warehouse.map_html``.

``CITY_AUDIT_BASEMAP_URL`` (an XYZ URL template such as ``https://tile.example/{z}/{x}/{y}.png``,
or ``off``) overrides the default OpenStreetMap tiles.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import geopandas as gpd
import matplotlib
import mercantile
import numpy as np
import pandas as pd
import shapely

matplotlib.use("Agg")  # no display on servers and in tests
import matplotlib.patheffects as path_effects  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402

from contracts.files import write_atomic
from contracts.notices import UNTRAINED_NOTE
from warehouse.attribution import credit_text  # noqa: E402
from warehouse.map_html import write_map_html  # noqa: E402,F401  (re-exported: publish and older callers)
from warehouse.styles import NO_DATA_COLOUR, class_colours  # noqa: E402

UNTRAINED_TITLE = UNTRAINED_NOTE
PANEL_COLUMNS = 4

#: Basemap tiles (XYZ URL template) and their credit; ``CITY_AUDIT_BASEMAP_URL`` overrides, ``off`` disables.
DEFAULT_BASEMAP_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_BASEMAP_CREDIT = "basemap © OpenStreetMap contributors"
BASEMAP_ENV = "CITY_AUDIT_BASEMAP_URL"
BASEMAP_TIMEOUT_S = 3.0     # one tile must answer within this, or the map is drawn without a basemap
BASEMAP_MAX_TILES = 24      # the zoom is the highest at which the sheet's extent needs at most this many tiles
BASEMAP_MAX_ZOOM = 18
MAX_STREET_NAMES = 6        # per panel: the main streets only
STREET_NAME_PT = 5.5
HIGHWAY_RANK = {h: i for i, h in enumerate(("motorway", "trunk", "primary", "secondary", "tertiary", "motorway_link",
                                            "trunk_link", "primary_link", "secondary_link", "tertiary_link",
                                            "unclassified", "residential", "living_street", "pedestrian", "service"))}


@dataclass
class Basemap:
    """A warped basemap image for the sheet's metric CRS, or the reason there is none (``image is None``)."""

    image: np.ndarray | None
    extent: tuple[float, float, float, float] | None  # (left, right, bottom, top) in the metric CRS
    note: str  # the URL template drawn, or why none was drawn (PNG text chunk ``Basemap``)


def basemap_url(url: str | None = None) -> str | None:
    """The tile URL template to use: ``url``, else ``$CITY_AUDIT_BASEMAP_URL``, else OpenStreetMap; None = off."""
    url = url if url is not None else os.environ.get(BASEMAP_ENV, DEFAULT_BASEMAP_URL)
    return None if url.strip().lower() in ("", "off", "none", "no", "false", "0") else url.strip()


def basemap_zoom(west: float, south: float, east: float, north: float, max_tiles: int = BASEMAP_MAX_TILES,
                 max_zoom: int = BASEMAP_MAX_ZOOM) -> int:
    """The highest web-mercator zoom (<= ``max_zoom``) at which the lon/lat box needs at most ``max_tiles`` tiles."""
    for zoom in range(max_zoom, -1, -1):
        upper_left, lower_right = mercantile.tile(west, north, zoom, truncate=True), mercantile.tile(east, south, zoom, truncate=True)
        if (lower_right.x - upper_left.x + 1) * (lower_right.y - upper_left.y + 1) <= max_tiles:
            return zoom
    return 0


def basemap_tiles(extent_m: tuple[float, float, float, float], metric_crs: str) -> tuple[list[mercantile.Tile], tuple]:
    """The XYZ tiles a sheet of ``extent_m`` (x0, y0, x1, y1 in ``metric_crs``) draws, and its lon/lat box."""
    corners = gpd.GeoSeries(shapely.points([extent_m[0], extent_m[2]], [extent_m[1], extent_m[3]]), crs=metric_crs)
    lonlat = corners.to_crs("EPSG:4326")
    box = float(lonlat.x.min()), float(lonlat.y.min()), float(lonlat.x.max()), float(lonlat.y.max())
    return list(mercantile.tiles(*box, zooms=basemap_zoom(*box))), box


def sheet_extent_m(*frames: gpd.GeoDataFrame) -> tuple[float, float, float, float] | None:
    """The map sheet's extent (x0, y0, x1, y1) around the non-empty frames, padded by 5 %; None if all are empty."""
    bounds = [f.total_bounds for f in frames if len(f)]
    if not bounds:
        return None
    x0, y0 = min(b[0] for b in bounds), min(b[1] for b in bounds)
    x1, y1 = max(b[2] for b in bounds), max(b[3] for b in bounds)
    pad = max(x1 - x0, y1 - y0, 200.0) * 0.05
    return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)


def _with_deadline(function, seconds: float):
    """Run ``function()`` in a daemon thread; its result, or raise TimeoutError after ``seconds``.

    A name lookup is not covered by an HTTP client's timeout; a daemon thread left behind never
    keeps the process alive.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = function()
        except BaseException as error:  # noqa: BLE001 (handed to the caller)
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True, name="city-audit-basemap")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def fetch_basemap(extent_m: tuple[float, float, float, float], metric_crs: str, url: str | None = None,
                  timeout_s: float = BASEMAP_TIMEOUT_S) -> Basemap:
    """Tiles for ``extent_m`` (x0, y0, x1, y1 in ``metric_crs``) from the XYZ ``url`` through contextily,
    warped to ``metric_crs``; a ``Basemap`` without image when tiles are off or cannot be reached.

    One tile is asked first with ``timeout_s``; only if it answers are the others fetched (each with
    the same timeout, all within ``4 × timeout_s``). Never raises for a network problem.
    """
    url = basemap_url(url)
    if url is None:
        return Basemap(None, None, "off")
    tiles, (west, south, east, north) = basemap_tiles(extent_m, metric_crs)
    zoom = tiles[0].z
    import contextily  # imported only when a basemap is wanted (it makes a cache folder on import)
    import requests

    centre = mercantile.tile((west + east) / 2, (south + north) / 2, zoom)

    def probe() -> None:
        answer = requests.get(url.format(z=centre.z, x=centre.x, y=centre.y), timeout=(timeout_s, timeout_s),
                              headers={"user-agent": "city-audit map.png"})
        answer.raise_for_status()

    try:
        _with_deadline(probe, timeout_s)
        image, extent = _with_deadline(lambda: contextily.bounds2img(
            west, south, east, north, zoom=zoom, source=url, ll=True, timeout=timeout_s, max_retries=1, wait=0,
            use_cache=False), 4 * timeout_s)
        image, extent = contextily.warp_tiles(image, extent, t_crs=metric_crs)
    except Exception as error:  # noqa: BLE001 (offline, refused, slow, not a tile: draw without a basemap)
        return Basemap(None, None, f"none ({url} unreachable: {type(error).__name__})")
    return Basemap(image, tuple(float(v) for v in extent), url)


def street_labels(segments_m: gpd.GeoDataFrame, limit: int = MAX_STREET_NAMES,
                  char_width_m: float | None = None) -> list[tuple[str, float, float, float]]:
    """Where to write the names of the main streets: ``[(name, x, y, angle_deg), ...]``, at most ``limit``.

    Streets (same ``name``) are ranked by road class (``highway``), then by total length; each name
    sits at the middle of the street's longest segment, turned along it (readable: -90..90°).
    A name whose box (``char_width_m`` per character, default a 70th of the extent) would touch
    one already placed is skipped, so names never overlap.
    """
    if not len(segments_m) or "name" not in segments_m:
        return []
    named = segments_m[segments_m["name"].notna() & (segments_m["name"].astype(str).str.strip() != "")]
    if named.empty:
        return []
    rank = named["highway"].map(HIGHWAY_RANK).fillna(len(HIGHWAY_RANK)) if "highway" in named else len(HIGHWAY_RANK)
    named = named.assign(_length=named.geometry.length.to_numpy(), _rank=rank)
    streets = named.groupby("name").agg(rank=("_rank", "min"), length=("_length", "sum"))
    streets = streets.sort_values(["rank", "length"], ascending=[True, False])
    longest = named.loc[named.groupby("name")["_length"].idxmax()].set_index("name")
    if char_width_m is None:
        x0, y0, x1, y1 = segments_m.total_bounds
        char_width_m = max(x1 - x0, y1 - y0, 1.0) / 70
    placed, boxes = [], []
    for name in streets.index:
        line = longest.geometry[name]
        a, mid, b = (line.interpolate(f, normalized=True) for f in (0.4, 0.5, 0.6))
        angle = math.atan2(b.y - a.y, b.x - a.x)
        half = len(str(name)) * char_width_m / 2
        dx, dy = half * math.cos(angle), half * math.sin(angle)
        box = shapely.LineString([(mid.x - dx, mid.y - dy), (mid.x + dx, mid.y + dy)]).buffer(char_width_m, cap_style="flat")
        if any(box.intersects(other) for other in boxes):
            continue
        degrees = math.degrees(angle)
        degrees = degrees - 180 if degrees > 90 else degrees + 180 if degrees < -90 else degrees
        placed.append((str(name), mid.x, mid.y, degrees))
        boxes.append(box)
        if len(placed) == limit:
            break
    return placed


def nice_length(span_m: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^n metres) of about a fifth of ``span_m``."""
    target = max(span_m / 5.0, 1.0)
    power = 10 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def _scale_label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def _decorate(ax, extent: tuple[float, float, float, float], crs_name: str) -> None:
    """Axes in km (no offset), a scale bar and a north arrow (grid north of the metric CRS)."""
    km = FuncFormatter(lambda v, _: f"{v / 1000:.1f}")
    ax.xaxis.set_major_formatter(km)
    ax.yaxis.set_major_formatter(km)
    ax.tick_params(labelsize=6)
    ax.set_xlabel(f"{crs_name} easting (km)", fontsize=7)
    ax.set_ylabel(f"{crs_name} northing (km)", fontsize=7)
    ax.set_aspect("equal")
    length = nice_length(extent[2] - extent[0])
    ax.add_artist(AnchoredSizeBar(ax.transData, length, _scale_label(length), "lower left", pad=0.4, sep=3,
                                  frameon=True, size_vertical=(extent[3] - extent[1]) / 150 or 1, fontproperties={"size": 7}))
    ax.annotate("N", xy=(0.94, 0.95), xytext=(0.94, 0.82), xycoords="axes fraction", ha="center", va="center",
                fontsize=9, fontweight="bold", arrowprops=dict(facecolor="black", width=3, headwidth=9, headlength=8))


def _line_paths(geometries: gpd.GeoSeries) -> list[np.ndarray]:
    """The vertex arrays (n x 2) of every part of ``geometries`` (LineStrings and MultiLineStrings)."""
    parts = shapely.get_parts(np.asarray(geometries.values, dtype=object))
    coords, index = shapely.get_coordinates(parts, return_index=True)
    return np.split(coords, np.flatnonzero(np.diff(index)) + 1) if len(coords) else []


def _panel(ax, seg: gpd.GeoDataFrame, img: gpd.GeoDataFrame, attribute: str, classes: Sequence[str]) -> None:
    """One attribute's panel: segments coloured by their dominant label (grey without images), images as dots.

    Drawn as one ``LineCollection`` per colour and one scatter, not with ``GeoDataFrame.plot``: geopandas
    redraws the whole figure after every plot call (``plt.draw()``), which made an 8-panel sheet of 19
    images cost about 30 s.
    """
    column = f"{attribute}_label"
    colours = class_colours(classes)
    labels = seg[column].where(seg[column].isin(classes)) if column in seg else pd.Series(None, index=seg.index)
    for label, colour, width in [(None, NO_DATA_COLOUR, 0.6)] + [(c, colours[c], 2.0) for c in classes]:
        chosen = labels.isna() if label is None else labels.eq(label)
        if chosen.any():
            ax.add_collection(LineCollection(_line_paths(seg.geometry[chosen.to_numpy()]), colors=colour,
                                             linewidths=width, zorder=2 if label is None else 2.5))
    if len(img):
        ax.scatter(img.geometry.x, img.geometry.y, s=4, c="black", zorder=3, linewidths=0)
    handles = [Line2D([0], [0], color=colours[c], lw=2, label=c.replace("_", " ")) for c in classes]
    handles += [Line2D([0], [0], color=NO_DATA_COLOUR, lw=1.2, label="no images"),
                Line2D([0], [0], marker="o", color="black", lw=0, markersize=3, label="image")]
    ax.legend(handles=handles, title=attribute.replace("_", " "), fontsize=6, title_fontsize=7, loc="upper left")
    ax.set_title(f"Dominant {attribute.replace('_', ' ')}", fontsize=9)


def _street_names(ax, labels: Sequence[tuple[str, float, float, float]]) -> None:
    halo = [path_effects.withStroke(linewidth=2.2, foreground="white")]
    for name, x, y, angle in labels:
        ax.text(x, y, name, fontsize=STREET_NAME_PT, color="#222222", rotation=angle, rotation_mode="anchor", ha="center",
                va="center", zorder=4, path_effects=halo, clip_on=True)


def write_map_png(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, path: str | os.PathLike,
                  attributes: Mapping[str, Sequence[str]], metric_crs: str, title: str = "", *,
                  attribution: Sequence[str] = (), untrained: bool = False, basemap: str | None = None,
                  basemap_timeout_s: float = BASEMAP_TIMEOUT_S) -> Path:
    """Draw one panel per attribute (``{attribute: classes}``) into a sheet; returns the PNG path.

    ``basemap``: an XYZ tile URL template (default ``$CITY_AUDIT_BASEMAP_URL`` or OpenStreetMap;
    ``"off"`` for none), drawn under the roads when one tile answers within ``basemap_timeout_s``;
    the PNG's ``Basemap`` text chunk says which URL was drawn or why none was. An empty run (no
    segments, no images) gives the same sheet with a note in every panel and no basemap.
    """
    seg, img = segments.to_crs(metric_crs), images.to_crs(metric_crs)
    frames = [f for f in (seg, img) if len(f)]
    extent = sheet_extent_m(seg, img) or (0.0, 0.0, 1000.0, 1000.0)
    n = len(attributes)
    cols = min(PANEL_COLUMNS, n)
    rows = math.ceil(n / cols)
    aspect = min(max((extent[2] - extent[0]) / (extent[3] - extent[1]), 0.6), 1.6)  # panel width / height
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * aspect * cols + 0.8, 4.6 * rows + 1.0), dpi=120, squeeze=False)
    crs_name = str(metric_crs)
    backdrop = fetch_basemap(extent, metric_crs, basemap, basemap_timeout_s) if frames else Basemap(None, None, "none (empty run)")
    panel_width_in = 4.6 * aspect * 0.8  # the axes' share of a panel's width
    names = street_labels(seg, char_width_m=(extent[2] - extent[0]) / panel_width_in * STREET_NAME_PT * 0.6 / 72)
    for ax, (attribute, classes) in zip(axes.flat, attributes.items()):
        if backdrop.image is not None:
            ax.imshow(backdrop.image, extent=backdrop.extent, interpolation="bilinear", alpha=0.55, zorder=0)
        _panel(ax, seg, img, attribute, classes)
        _street_names(ax, names)
        ax.set_xlim(extent[0], extent[2])
        ax.set_ylim(extent[1], extent[3])
        _decorate(ax, extent, crs_name)
        if not frames:
            ax.text(0.5, 0.5, "no road segments and no images in this run\n(see report.md)", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="#555555")
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    heading = title or "Dominant label per road segment"
    if untrained:
        heading = f"{heading}\n{UNTRAINED_TITLE}"
    fig.suptitle(heading, fontsize=13, color="#B00020" if untrained else "black")
    credit = credit_text(attribution) or "roads © OpenStreetMap contributors"
    if backdrop.image is not None:
        credit = f"{credit}; " + (OSM_BASEMAP_CREDIT if "openstreetmap.org" in backdrop.note else f"basemap {backdrop.note}")
    fig.text(0.5, 0.005, credit, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    try:
        return write_atomic(path, lambda partial: fig.savefig(
            partial, format="png", metadata={"Copyright": credit, "Title": heading.replace("\n", " "),
                                               "Basemap": backdrop.note}))
    finally:
        plt.close(fig)
