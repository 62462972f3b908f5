"""Choose which discovered images to download: filters, thinning along sequences, a maximum count.

Input and output are DataFrames of image records (see ``records.RECORD_COLUMNS``). The same
selection runs for both discovery modes; search mode also sends the filters to the server,
which only saves bandwidth.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from geo.area import OUTSIDE_AREA, area_polygon
from geo.bbox import BBox
from geo.mapillary.options import MapillaryOptions, parse_time
from geo.mapillary.records import RECORD_COLUMNS

EARTH_RADIUS_M = 6_371_008.8


def records_frame(records) -> pd.DataFrame:
    """A DataFrame with ``RECORD_COLUMNS`` (and ``tile`` when present) from an iterable of records."""
    frame = pd.DataFrame(list(records))
    for column in RECORD_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["captured_at"] = pd.to_datetime(frame["captured_at"], utc=True, format="ISO8601")  # whole and fractional seconds mix
    return frame


def filter_reasons(frame: pd.DataFrame, options: MapillaryOptions, bbox: BBox | None = None) -> pd.Series:
    """Per row, why the filters drop it ("outside bbox", "captured before captured_after", ...), or None to keep it.

    Images with an unknown capture time are dropped when a date range is set ("unknown capture
    time"); images with an unknown panorama flag count as not panoramic.
    """
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)

    def drop(mask, reason: str) -> None:
        mask = pd.Series(mask, index=frame.index).fillna(False).astype(bool)
        reasons[mask & reasons.isna()] = reason

    drop(frame["lon"].isna() | frame["lat"].isna(), "no position")
    if bbox is not None:
        drop(~(frame["lon"].between(bbox.min_lon, bbox.max_lon) & frame["lat"].between(bbox.min_lat, bbox.max_lat)),
             "outside bbox")
        if area_polygon(bbox) is not None:
            known = (frame["lon"].notna() & frame["lat"].notna()).to_numpy()
            outside = np.zeros(len(frame), bool)
            outside[known] = ~bbox.contains_points(frame["lon"].to_numpy(float)[known],
                                                   frame["lat"].to_numpy(float)[known])
            drop(outside, OUTSIDE_AREA)
    if options.captured_after or options.captured_before:
        drop(frame["captured_at"].isna(), "unknown capture time")
    if options.captured_after:
        drop(frame["captured_at"] < parse_time(options.captured_after), "captured before captured_after")
    if options.captured_before:
        drop(frame["captured_at"] >= parse_time(options.captured_before), "captured at or after captured_before")
    pano = frame["is_pano"].astype("boolean").fillna(False).astype(bool)
    if options.panoramas == "no":
        drop(pano, "panorama (panoramas=no)")
    elif options.panoramas == "only":
        drop(~pano, "not a panorama (panoramas=only)")
    if options.organization_id:
        drop(frame["organization_id"].astype("string") != str(options.organization_id), "another organization")
    return reasons


def apply_filters(frame: pd.DataFrame, options: MapillaryOptions, bbox: BBox | None = None) -> pd.DataFrame:
    """Rows inside ``bbox`` that pass the capture-date range, panorama and organisation filters (see ``filter_reasons``)."""
    return frame.loc[filter_reasons(frame, options, bbox).isna().to_numpy()].reset_index(drop=True)


def distance_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle (haversine) distance in metres between points given in degrees."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(v, dtype=float)) for v in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def thin_sequences(frame: pd.DataFrame, min_spacing_m: float) -> pd.DataFrame:
    """At most one image per ``min_spacing_m`` metres along each sequence (greedy, in capture order).

    The first image of a sequence is kept; each next one is kept when it lies at least
    ``min_spacing_m`` from the last kept one. Images without a sequence are all kept.
    """
    if min_spacing_m <= 0 or frame.empty:
        return frame.reset_index(drop=True)
    ordered = frame.sort_values(["sequence_id", "captured_at", "image_id"], na_position="last", kind="stable")
    keep = np.ones(len(ordered), dtype=bool)
    sequence = ordered["sequence_id"].to_numpy(dtype=object)
    lon, lat = ordered["lon"].to_numpy(dtype=float), ordered["lat"].to_numpy(dtype=float)
    # one haversine per image from its predecessor would be wrong (the last *kept* one counts), so this loops;
    # scalar math keeps it at about a microsecond per image
    rad_lon, rad_lat = np.radians(lon), np.radians(lat)
    cos_lat = np.cos(rad_lat)
    last = None
    for i in range(len(ordered)):
        if sequence[i] is None or pd.isna(sequence[i]):
            last = None
            continue
        if last is not None and sequence[last] == sequence[i]:
            a = (math.sin((rad_lat[i] - rad_lat[last]) / 2) ** 2
                 + cos_lat[i] * cos_lat[last] * math.sin((rad_lon[i] - rad_lon[last]) / 2) ** 2)
            if 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a))) < min_spacing_m:
                keep[i] = False
                continue
        last = i
    return ordered.loc[keep].sort_index().reset_index(drop=True)


def limit_count(frame: pd.DataFrame, max_images: int | None) -> pd.DataFrame:
    """The ``max_images`` most recent images (ties by id), or all of them without a maximum."""
    if max_images is None or len(frame) <= max_images:
        return frame
    ordered = frame.sort_values(["captured_at", "image_id"], ascending=[False, True], na_position="last")
    return ordered.head(max_images).sort_index().reset_index(drop=True)


def select_counted(frame: pd.DataFrame, options: MapillaryOptions, bbox: BBox | None = None
                   ) -> tuple[pd.DataFrame, dict[str, int]]:
    """``select_images`` and, per reason, how many distinct images it left out (they add up to the difference)."""
    unique = frame.drop_duplicates("image_id")
    reasons = filter_reasons(unique, options, bbox)
    dropped = {str(k): int(v) for k, v in reasons.dropna().value_counts().items()}
    chosen = unique.loc[reasons.isna().to_numpy()].reset_index(drop=True)
    thinned = thin_sequences(chosen, options.min_spacing_m)
    if len(thinned) < len(chosen):
        dropped["thinned (min_spacing_m)"] = len(chosen) - len(thinned)
    limited = limit_count(thinned, options.max_images)
    if len(limited) < len(thinned):
        dropped["beyond max_images"] = len(thinned) - len(limited)
    return limited.sort_values("image_id", ignore_index=True), dropped


def select_images(frame: pd.DataFrame, options: MapillaryOptions, bbox: BBox | None = None) -> pd.DataFrame:
    """Filters, then thinning, then the maximum count; rows sorted by ``image_id``, one per id."""
    return select_counted(frame, options, bbox)[0]
