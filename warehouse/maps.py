"""Map pictures of a run: a PNG (matplotlib, headless) and an interactive HTML map (folium/Leaflet).

Both colour road segments by the dominant label of an attribute, using the class colours of
``warehouse.styles`` (segments without images in grey), and show the images as dots. The HTML
map is written offline; when opened it loads Leaflet and the OpenStreetMap background tiles
from their CDNs.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Mapping, Sequence

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")  # no display on servers and in tests
import folium  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from warehouse.styles import NO_DATA_COLOUR, class_colours  # noqa: E402


def write_map_png(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, path: str | os.PathLike, attribute: str,
                  classes: Sequence[str], metric_crs: str, title: str = "") -> Path:
    """Draw segments coloured by ``<attribute>_label`` and the images; returns the PNG path."""
    colours = class_colours(classes)
    column = f"{attribute}_label"
    seg = segments.to_crs(metric_crs)
    fig, ax = plt.subplots(figsize=(10, 10), dpi=120)
    labelled = seg[column].notna() if column in seg else seg.index != seg.index
    if (~labelled).any():
        seg[~labelled].plot(ax=ax, color=NO_DATA_COLOUR, linewidth=0.8)
    for cls in classes:
        part = seg[labelled & (seg[column] == cls)] if column in seg else seg.iloc[:0]
        if len(part):
            part.plot(ax=ax, color=colours[cls], linewidth=2.5)
    if len(images):
        images.to_crs(metric_crs).plot(ax=ax, color="black", markersize=8, zorder=3)
    handles = [Line2D([0], [0], color=colours[c], lw=3, label=c.replace("_", " ")) for c in classes]
    handles += [Line2D([0], [0], color=NO_DATA_COLOUR, lw=1.5, label="no images"),
                Line2D([0], [0], marker="o", color="black", lw=0, markersize=4, label="image")]
    ax.legend(handles=handles, title=attribute.replace("_", " "), loc="best", fontsize=8)
    ax.set_title(title or f"Dominant {attribute.replace('_', ' ')} per road segment", fontsize=11)
    ax.set_xlabel(f"{metric_crs} x (m)")
    ax.set_ylabel(f"{metric_crs} y (m)")
    ax.set_aspect("equal")
    ax.text(0.99, 0.01, "roads © OpenStreetMap contributors", transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    fig.savefig(partial, format="png", bbox_inches="tight")
    plt.close(fig)
    os.replace(partial, path)
    return path


def _tooltip_fields(frame: gpd.GeoDataFrame, fields: Sequence[str]) -> list[str]:
    return [f for f in fields if f in frame.columns]


def write_map_html(segments: gpd.GeoDataFrame, images: gpd.GeoDataFrame, path: str | os.PathLike,
                   attributes: Mapping[str, Sequence[str]], shown: str, title: str = "") -> Path:
    """A Leaflet map with one switchable layer per attribute (``shown`` on at start) and the images."""
    bounds = segments.total_bounds if len(segments) else images.total_bounds
    fmap = folium.Map(tiles="OpenStreetMap", control_scale=True)
    if len(segments) or len(images):
        fmap.fit_bounds([[bounds[1], bounds[0]], [bounds[3], bounds[2]]])
    keep = ["segment_id", "name", "highway", "length_m", "n_images", "geometry"]
    for attribute, classes in attributes.items():
        colours = class_colours(classes)
        column = f"{attribute}_label"
        fields = [f"{attribute}_{f}" for f in ("label", "share", "share_ci_low", "share_ci_high")]
        data = segments[_tooltip_fields(segments, keep[:-1] + fields) + ["geometry"]].copy()
        for field in fields[1:]:
            if field in data:
                data[field] = data[field].round(2)
        layer = folium.FeatureGroup(name=f"{attribute.replace('_', ' ')} (dominant label)", show=attribute == shown)
        folium.GeoJson(
            data.to_json(na="null"),
            style_function=lambda f, c=column, col=colours: {
                "color": col.get(f["properties"].get(c) or "", NO_DATA_COLOUR),
                "weight": 5 if f["properties"].get(c) else 2, "opacity": 0.9},
            tooltip=folium.GeoJsonTooltip(fields=_tooltip_fields(data, keep[:-1] + fields)),
        ).add_to(layer)
        layer.add_to(fmap)
    if len(images):
        points = folium.FeatureGroup(name="images", show=True)
        fields = _tooltip_fields(images, ["image_id", "captured_at", "segment_id", "distance_m", "unmatched_reason",
                                          f"{shown}_label"])
        data = images[fields + ["geometry"]].copy()
        data["captured_at"] = data["captured_at"].astype("string") if "captured_at" in data else None
        folium.GeoJson(data.to_json(na="null"), marker=folium.CircleMarker(radius=4, color="black", fill=True, fill_opacity=0.8),
                       tooltip=folium.GeoJsonTooltip(fields=fields)).add_to(points)
        points.add_to(fmap)
    folium.LayerControl(collapsed=False).add_to(fmap)
    if title:
        fmap.get_root().html.add_child(folium.Element(f"<title>{html.escape(title)}</title>"))
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    fmap.save(str(partial))
    os.replace(partial, path)
    return path
