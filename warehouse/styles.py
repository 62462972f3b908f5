"""QGIS layer styles (``.qml``): categorised rendering of ``<attribute>_label`` on road segments.

One file per attribute, ``styles/<attribute>.qml``. In QGIS: Layer Properties → Symbology →
Style → Load Style… and pick the file (or drag it onto the layer). Each class gets a fixed colour
(the same ones the PNG and HTML maps use); segments without images fall in a grey catch-all.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

#: Colour-blind-safe qualitative palette (Okabe & Ito 2008), assigned to classes in schema order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
NO_DATA_COLOUR = "#B0B0B0"


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    """``{class: "#rrggbb"}`` in class order; the same class always gets the same colour."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def _rgba(hex_colour: str) -> str:
    value = hex_colour.lstrip("#")
    return ",".join(str(int(value[i:i + 2], 16)) for i in (0, 2, 4)) + ",255"


def _line_symbol(name: str, colour: str, width_mm: float) -> ET.Element:
    symbol = ET.Element("symbol", type="line", name=name, alpha="1", clip_to_extent="1", force_rhr="0")
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleLine", "enabled": "1", "locked": "0", "pass": "0"})
    options = {"line_color": _rgba(colour), "line_width": f"{width_mm:g}", "line_width_unit": "MM",
               "capstyle": "round", "joinstyle": "round", "line_style": "solid"}
    option_map = ET.SubElement(layer, "Option", type="Map")  # QGIS >= 3.26 reads these
    for key, value in options.items():
        ET.SubElement(option_map, "Option", type="QString", name=key, value=value)
    for key, value in options.items():  # older QGIS reads these
        ET.SubElement(layer, "prop", k=key, v=value)
    return symbol


def _marker_symbol(name: str, colour: str, size_mm: float) -> ET.Element:
    symbol = ET.Element("symbol", type="marker", name=name, alpha="1", clip_to_extent="1", force_rhr="0")
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleMarker", "enabled": "1", "locked": "0", "pass": "0"})
    options = {"name": "circle", "color": _rgba(colour), "outline_color": "35,35,35,255", "outline_width": "0.2",
               "outline_width_unit": "MM", "size": f"{size_mm:g}", "size_unit": "MM"}
    option_map = ET.SubElement(layer, "Option", type="Map")
    for key, value in options.items():
        ET.SubElement(option_map, "Option", type="QString", name=key, value=value)
    for key, value in options.items():
        ET.SubElement(layer, "prop", k=key, v=value)
    return symbol


def categorised_style(attribute: str, classes: Sequence[str], geometry: str = "line") -> str:
    """QML text of a categorised renderer on ``<attribute>_label`` with one category per class.

    ``geometry`` "line" (road segments, the default) or "point" (the images layer).
    """
    symbol = _line_symbol if geometry == "line" else _marker_symbol
    size, none_size = (1.2, 0.5) if geometry == "line" else (2.2, 1.6)
    root = ET.Element("qgis", version="3.22.0", styleCategories="Symbology")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=f"{attribute}_label",
                             symbollevels="0", enableorderby="0", forceraster="0", referencescale="-1")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    colours = class_colours(classes)
    for index, cls in enumerate(classes):
        ET.SubElement(categories, "category", symbol=str(index), value=cls, label=cls.replace("_", " "), render="true")
        symbols.append(symbol(str(index), colours[cls], size))
    ET.SubElement(categories, "category", symbol=str(len(classes)), value="",
                  label="no images" if geometry == "line" else "no label", render="true")
    symbols.append(symbol(str(len(classes)), NO_DATA_COLOUR, none_size))
    source = ET.SubElement(renderer, "source-symbol")
    source.append(symbol("0", NO_DATA_COLOUR, none_size))
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def write_styles(folder: str | os.PathLike, attributes: Mapping[str, Sequence[str]], images_attribute: str | None = None
                 ) -> dict[str, Path]:
    """Write ``<folder>/<attribute>.qml`` for every attribute (``{attribute: classes}``); returns the paths.

    With ``images_attribute`` also ``<folder>/images.qml``: the images layer as points coloured by
    that attribute's label (returned under the key ``"images"``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for attribute, classes in attributes.items():
        path = folder / f"{attribute}.qml"
        path.write_text(categorised_style(attribute, classes), encoding="utf-8")
        paths[attribute] = path
    if images_attribute is not None:
        path = folder / "images.qml"
        path.write_text(categorised_style(images_attribute, attributes[images_attribute], geometry="point"), encoding="utf-8")
        paths["images"] = path
    return paths


LAYER_STYLES_DDL = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
    useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""


def embed_styles_in_geopackage(path: str | os.PathLike, layer: str, attributes: Mapping[str, Sequence[str]],
                               default: str, geometry_column: str = "geom", images_layer: str | None = None) -> int:
    """Store one style per attribute in the GeoPackage's ``layer_styles`` table (QGIS's own schema).

    ``update_time`` defaults to the GeoPackage DATETIME form (``YYYY-MM-DDTHH:MM:SS.SSSZ``, what
    QGIS itself writes): SQLite's ``CURRENT_TIMESTAMP`` is not a conformant GeoPackage datetime.

    QGIS applies the ``default`` attribute's style when the layer is opened; the others are listed
    under Layer Properties → Symbology → Style → Load Style → From database. With ``images_layer``
    that point layer also gets its style (``images.qml``'s: points coloured by the ``default``
    attribute's label), as its default. Returns the number of styles stored.
    """
    import sqlite3

    rows = [(layer, geometry_column, attribute, categorised_style(attribute, classes), int(attribute == default),
             f"dominant {attribute.replace('_', ' ')} per segment") for attribute, classes in attributes.items()]
    if images_layer is not None:
        rows.append((images_layer, geometry_column, default, categorised_style(default, attributes[default], geometry="point"),
                     1, f"images coloured by their {default.replace('_', ' ')} label"))
    with sqlite3.connect(path) as db:  # one transaction: all styles or none
        db.execute(LAYER_STYLES_DDL)
        db.execute("""INSERT INTO gpkg_contents (table_name, data_type, identifier, description)
                      SELECT 'layer_styles', 'attributes', 'layer_styles', 'QGIS layer styles'
                      WHERE NOT EXISTS (SELECT 1 FROM gpkg_contents WHERE table_name = 'layer_styles')""")
        db.executemany("DELETE FROM layer_styles WHERE f_table_name = ?", sorted({(row[0],) for row in rows}))
        db.executemany(
            """INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName,
                                         styleQML, styleSLD, useAsDefault, description, owner, ui)
               VALUES ('', '', ?, ?, ?, ?, '', ?, ?, 'city-audit', '')""", rows)
    return len(rows)
