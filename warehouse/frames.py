"""A run's audit database read back as tables for publishing: one row per segment, one per image.

``segments_frame``: every road segment with one column group per attribute (``weather_label``,
``weather_share``, ``weather_share_ci_low`` ...) and ``n_images``, small enough to hold (one row per
segment). ``image_batches``: every image with its match (or why it has none) and a label/confidence pair
per attribute, in image_id order, ``IMAGE_BATCH`` images at a time with the types of a whole-table read,
so that publishing holds one batch whatever the image count. The writers are in ``warehouse.export``.
"""

from __future__ import annotations

from typing import Sequence

import duckdb
import geopandas as gpd
import pandas as pd

from warehouse.db import sql

SEGMENT_GROUP = ("label", "share", "share_ci_low", "share_ci_high", "mean_confidence", "label_counts")
IMAGE_GROUP = ("label", "confidence")


def _wide(long: pd.DataFrame, keys: list[str], group: Sequence[str], attributes: Sequence[str]) -> pd.DataFrame:
    """One row per key, columns ``<attribute>_<field>`` in attribute order (``DataFrame.pivot``)."""
    base = long[keys].drop_duplicates(subset=keys[0]).set_index(keys[0])
    wide = long.dropna(subset=["attribute"]).pivot(index=keys[0], columns="attribute", values=list(group))
    columns = pd.MultiIndex.from_tuples([(field, attribute) for attribute in attributes for field in group])
    wide = wide.reindex(columns=columns).reindex(base.index)
    wide = wide.astype({column: long[column[0]].dtype for column in columns})  # pivot of mixed fields gives object
    wide.columns = [f"{attribute}_{field}" for field, attribute in columns]
    return base.join(wide).reset_index()


def segments_frame(con: duckdb.DuckDBPyConnection, attributes: Sequence[str]) -> gpd.GeoDataFrame:
    """Segments with their per-attribute aggregates, one row per segment (EPSG:4326)."""
    long = con.execute(sql("export_segments")).df()
    keys = ["segment_id", "osm_way_id", "highway", "name", "length_m", "wkb"]
    wide = _wide(long, keys, SEGMENT_GROUP, attributes)
    totals = long.groupby("segment_id").agg(n_images=("n_images", "max"), first_captured_at=("first_captured_at", "min"),
                                            last_captured_at=("last_captured_at", "max"))
    wide = wide.join(totals, on="segment_id")
    wide["n_images"] = wide["n_images"].fillna(0).astype("int32")
    return gpd.GeoDataFrame(wide.drop(columns="wkb"), geometry=gpd.GeoSeries.from_wkb(wide["wkb"].map(bytes)), crs="EPSG:4326")


#: Images pivoted and written per batch of this many (publishing holds one batch, not the whole images table;
#: a batch of 5,000 is about 75 MB in pandas: its 8 prediction rows per image, pivoted).
IMAGE_BATCH = 5_000
#: map.png and map.html draw at most this many images (every k-th in image_id order past it): their size stays bounded.
MAP_MAX_IMAGES = 25_000
_IMAGE_KEYS = ["image_id", "source", "sequence_id", "captured_at", "compass_angle", "is_pano", "camera_type", "lon",
               "lat", "width", "height", "path", "sha256", "wkb", "segment_id", "distance_m", "heading_difference_deg",
               "unmatched_reason"]


def _image_ranges(con: duckdb.DuckDBPyConnection, batch: int) -> list[tuple[str | None, str | None]]:
    """``(lo, hi)`` image_id bounds of consecutive batches of ``batch`` images (one open range when there are none)."""
    starts = [r[0] for r in con.execute(
        "SELECT image_id FROM (SELECT image_id, row_number() OVER (ORDER BY image_id) - 1 AS k FROM images) "
        "WHERE k % $b = 0 ORDER BY image_id", {"b": batch}).fetchall()]
    if not starts:
        return [(None, None)]
    return list(zip(starts, [*starts[1:], None]))


def _image_dtypes(con: duckdb.DuckDBPyConnection, attributes: Sequence[str]) -> dict[str, str]:
    """The pandas dtype of each column that a batch may type otherwise than the whole table would.

    ``DuckDB.df()`` gives an all-NULL text column ``object`` (else ``str``), an integer or boolean
    column with a NULL ``Int32`` / ``boolean`` (else ``int32`` / ``bool``); decided here over all images,
    so that every batch, and so every file written batch by batch, has the types of one whole-table read.
    """
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'images'").fetchall())
    columns = [c for c in _IMAGE_KEYS if c in types and types[c] in ("VARCHAR", "INTEGER", "BOOLEAN")]
    counts = con.execute("SELECT count(*), " + ", ".join(f'count("{c}")' for c in columns) + " FROM images").fetchone()
    n, nonnull = counts[0], dict(zip(columns, counts[1:]))
    plan = {}
    for c in columns:
        if types[c] == "VARCHAR":
            if nonnull[c]:
                plan[c] = "str"
        elif types[c] == "INTEGER":
            plan[c] = "int32" if nonnull[c] == n else "Int32"
        else:
            plan[c] = "bool" if nonnull[c] == n else "boolean"
    if con.execute("SELECT count(segment_id) FROM matches").fetchone()[0]:
        plan["segment_id"] = "str"
    if con.execute("SELECT count(reason) FROM unmatched_reasons").fetchone()[0]:
        plan["unmatched_reason"] = "str"
    labelled = dict(con.execute("SELECT attribute, count(label) FROM predictions GROUP BY attribute").fetchall())
    for attribute in attributes:
        if labelled.get(attribute):
            plan[f"{attribute}_label"] = "str"
    if con.execute("SELECT count(method) FROM predictions").fetchone()[0]:
        plan["method"] = "str"
    return plan


def _images_batch(con: duckdb.DuckDBPyConnection, attributes: Sequence[str], lo: str | None, hi: str | None,
                  dtypes: dict[str, str]) -> gpd.GeoDataFrame:
    long = con.execute(sql("export_images"), {"lo": lo, "hi": hi}).df()
    wide = _wide(long, _IMAGE_KEYS, IMAGE_GROUP, attributes)
    methods = long.dropna(subset=["attribute"]).groupby("image_id")["method"].agg(lambda m: ",".join(sorted(set(m))))
    wide["method"] = wide["image_id"].map(methods)
    wide = wide.astype({c: t for c, t in dtypes.items() if c in wide and str(wide[c].dtype) != t})
    return gpd.GeoDataFrame(wide.drop(columns="wkb"), geometry=gpd.GeoSeries.from_wkb(wide["wkb"].map(bytes)), crs="EPSG:4326")


def image_batches(con: duckdb.DuckDBPyConnection, attributes: Sequence[str], batch: int | None = None):
    """Images with their match (or unmatched reason) and per-attribute labels, one row per image, in image_id
    order, as GeoDataFrames of up to ``batch`` rows (at least one, maybe empty); the types are those of the whole table."""
    dtypes = _image_dtypes(con, attributes)
    for lo, hi in _image_ranges(con, batch or IMAGE_BATCH):
        yield _images_batch(con, attributes, lo, hi, dtypes)


def images_frame(con: duckdb.DuckDBPyConnection, attributes: Sequence[str]) -> gpd.GeoDataFrame:
    """Images with their match (or unmatched reason) and per-attribute labels, one row per image (whole, in memory)."""
    parts = list(image_batches(con, attributes))
    return parts[0] if len(parts) == 1 else gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")


def image_count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM images").fetchone()[0]
