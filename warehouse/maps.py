"""The map picture ``map.png`` (matplotlib, headless): a small-multiples sheet, one panel per attribute.

Each panel colours road segments by the dominant label of one attribute with the class colours
of ``warehouse.styles`` (segments without images in grey, drawn by geopandas' categorical plot
and its legend) and shows the images as dots. The sheet has metric axes in km without offset
notation, a scale bar, a north arrow, the UNTRAINED warning in the title where it applies and
the run's credit lines at the foot. The interactive map lives in ``warehouse.map_html``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")  # no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
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


def _panel(ax, seg: gpd.GeoDataFrame, img: gpd.GeoDataFrame, attribute: str, classes: Sequence[str]) -> None:
    column = f"{attribute}_label"
    colours = class_colours(classes)
    if len(seg):
        data = seg.assign(**{column: seg[column].where(seg[column].isin(classes)) if column in seg else None})
        labelled = data[column].notna()
        if (~labelled).any():
            data[~labelled].plot(ax=ax, color=NO_DATA_COLOUR, linewidth=0.6)
        if labelled.any():
            data[labelled].plot(ax=ax, column=column, categorical=True, categories=list(classes),
                                cmap=ListedColormap([colours[c] for c in classes]), linewidth=2.0, legend=True,
                                legend_kwds={"fontsize": 6, "title_fontsize": 7, "loc": "upper left", "frameon": True,
                                             "title": attribute.replace("_", " ")})
    if len(img):
        img.plot(ax=ax, color="black", markersize=4, zorder=3)
    legend = ax.get_legend()
    extra = [Line2D([0], [0], color=NO_DATA_COLOUR, lw=1.2, label="no images"),
             Line2D([0], [0], marker="o", color="black", lw=0, markersize=3, label="image")]
    if legend is None:  # nothing labelled: the legend still names the classes and the grey
        handles = [Line2D([0], [0], color=colours[c], lw=2, label=c.replace("_", " ")) for c in classes]
        ax.legend(handles=handles + extra, title=attribute.replace("_", " "), fontsize=6, title_fontsize=7, loc="upper left")
    else:
        handles = list(legend.legend_handles)
        for handle, text in zip(handles, legend.get_texts()):
            handle.set_label(text.get_text().replace("_", " "))
        ax.legend(handles=handles + extra, title=attribute.replace("_", " "), fontsize=6, title_fontsize=7, loc="upper left")
    ax.set_title(f"Dominant {attribute.replace('_', ' ')}", fontsize=9)


def write_map_png(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, path: str | os.PathLike,
                  attributes: Mapping[str, Sequence[str]], metric_crs: str, title: str = "", *,
                  attribution: Sequence[str] = (), untrained: bool = False) -> Path:
    """Draw one panel per attribute (``{attribute: classes}``) into a sheet; returns the PNG path.

    An empty run (no segments, no images) gives the same sheet with a note in every panel.
    """
    seg, img = segments.to_crs(metric_crs), images.to_crs(metric_crs)
    frames = [f for f in (seg, img) if len(f)]
    if frames:
        bounds = [f.total_bounds for f in frames]
        x0, y0 = min(b[0] for b in bounds), min(b[1] for b in bounds)
        x1, y1 = max(b[2] for b in bounds), max(b[3] for b in bounds)
        pad = max(x1 - x0, y1 - y0, 200.0) * 0.05
        extent = (x0 - pad, y0 - pad, x1 + pad, y1 + pad)
    else:
        extent = (0.0, 0.0, 1000.0, 1000.0)
    n = len(attributes)
    cols = min(PANEL_COLUMNS, n)
    rows = math.ceil(n / cols)
    aspect = min(max((extent[2] - extent[0]) / (extent[3] - extent[1]), 0.6), 1.6)  # panel width / height
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * aspect * cols + 0.8, 4.6 * rows + 1.0), dpi=120, squeeze=False)
    crs_name = str(metric_crs)
    for ax, (attribute, classes) in zip(axes.flat, attributes.items()):
        _panel(ax, seg, img, attribute, classes)
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
    fig.text(0.5, 0.005, credit, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    try:
        return write_atomic(path, lambda partial: fig.savefig(
            partial, format="png", metadata={"Copyright": credit, "Title": heading.replace("\n", " ")}))
    finally:
        plt.close(fig)
