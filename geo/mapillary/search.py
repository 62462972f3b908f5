"""Discovery through the Graph API bbox search, ``GET /images?bbox=...&fields=...``.

The search has no pagination and refuses boxes of 0.01 degree or more, so an area is cut into
boxes of ``search_tile_deg`` (0.005 by default), results are deduplicated by id, and a box
that returns ``search_limit`` results (the answer may be cut off) is split in four and asked
again, down to ``min_search_tile_deg``. A box that is still full at that size is reported in
the result's ``saturated`` list, never silently dropped.

An answer must be a JSON object with a ``data`` list: an HTTP 200 whose body is an error or
has no ``data`` list is retried, then the box (and so its tile) fails; it is never read as "no
images". A result without an id, without a position, with coordinates out of range or outside
the run's bbox is a failure row of ``SearchResult.failures``, not a silent gap.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from geo.area import area_polygon
from geo.bbox import BBox
from geo.mapillary.client import MapillaryClient, UnusableAnswer
from geo.mapillary.options import MapillaryOptions, parse_time
from geo.mapillary.records import SEARCH_FIELDS, graph_record, position_problem

log = logging.getLogger("geo.mapillary")


@dataclass
class SearchResult:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # image_id -> record
    requests: int = 0
    saturated: list[BBox] = field(default_factory=list)  # boxes still at the limit after splitting
    failures: dict[str, str] = field(default_factory=dict)  # item id -> reason ("no geometry: ...")


def split_box(box: BBox, side_deg: float) -> list[BBox]:
    """Cut ``box`` into a grid of boxes whose sides are at most ``side_deg`` degrees."""
    nx = max(1, math.ceil((box.max_lon - box.min_lon) / side_deg - 1e-9))
    ny = max(1, math.ceil((box.max_lat - box.min_lat) / side_deg - 1e-9))
    dx, dy = (box.max_lon - box.min_lon) / nx, (box.max_lat - box.min_lat) / ny
    return [BBox(box.min_lon + i * dx, box.min_lat + j * dy,
                 box.max_lon if i == nx - 1 else box.min_lon + (i + 1) * dx,
                 box.max_lat if j == ny - 1 else box.min_lat + (j + 1) * dy)
            for j in range(ny) for i in range(nx)]


def quarter(box: BBox) -> list[BBox]:
    """The four quarters of ``box``."""
    mid_lon, mid_lat = (box.min_lon + box.max_lon) / 2, (box.min_lat + box.max_lat) / 2
    return [BBox(box.min_lon, box.min_lat, mid_lon, mid_lat), BBox(mid_lon, box.min_lat, box.max_lon, mid_lat),
            BBox(box.min_lon, mid_lat, mid_lon, box.max_lat), BBox(mid_lon, mid_lat, box.max_lon, box.max_lat)]


def in_area(boxes: list[BBox], within: BBox | None) -> list[BBox]:
    """The ``boxes`` that intersect ``within``'s polygon when it is a ``geo.area.Area`` (all of them otherwise)."""
    if area_polygon(within) is None:
        return boxes
    return [b for b in boxes if within.intersects_box(*b.as_list())]


def search_params(box: BBox, options: MapillaryOptions) -> dict[str, str]:
    """Query parameters of one search request: bbox, explicit fields, limit and the server-side filters."""
    params = {"bbox": ",".join(f"{v:.7f}" for v in box.as_list()), "fields": ",".join(SEARCH_FIELDS),
              "limit": str(options.search_limit)}
    if options.captured_after:
        params["start_captured_at"] = parse_time(options.captured_after).strftime("%Y-%m-%dT%H:%M:%SZ")
    if options.captured_before:
        params["end_captured_at"] = parse_time(options.captured_before).strftime("%Y-%m-%dT%H:%M:%SZ")
    if options.organization_id:
        params["organization_id"] = str(options.organization_id)
    if options.panoramas == "only":
        params["is_pano"] = "true"
    return params


def _has_data_list(body: dict[str, Any]) -> None:
    if not isinstance(body.get("data"), list):
        raise UnusableAnswer(f"a search answer without a 'data' list (keys: {sorted(body)[:8]})")


def _triage(item: Any, index: int, box: BBox, within: BBox | None, result: SearchResult) -> None:
    """Put one search result into ``result.records`` or, with the reason, into ``result.failures``."""
    if not isinstance(item, dict):
        result.failures[f"result {index} of search box {box}"] = f"unusable result: {type(item).__name__}, not an object"
        return
    record = graph_record(item)
    image_id = record["image_id"]
    if image_id is None:
        result.failures[f"result {index} of search box {box}"] = "no image id: a search result without an id"
        return
    problem = position_problem(item)
    if problem is not None:
        result.failures[image_id] = f"{problem}: search result {image_id} has no usable position"
    elif within is not None and not within.contains(record["lon"], record["lat"]):
        result.failures[image_id] = (f"outside bbox: search result {image_id} at {record['lon']:.6f},"
                                     f"{record['lat']:.6f} lies outside the bbox {within}")
    else:
        result.records.setdefault(image_id, record)


async def search_area(client: MapillaryClient, area: BBox, options: MapillaryOptions,
                      within: BBox | None = None) -> SearchResult:
    """Every image the search returns inside ``area``, deduplicated by id, splitting full boxes.

    ``within`` (the run's bbox): results outside it are failures ("outside bbox"). For a ``geo.area.Area``
    only the boxes that intersect its polygon are asked; results in its bounds but outside the polygon
    are left to selection ("outside area").
    """
    result = SearchResult()

    async def one(box: BBox) -> None:
        body = await client.graph("images", search_params(box, options), check=_has_data_list)
        result.requests += 1
        data = body["data"]
        for index, item in enumerate(data):
            _triage(item, index, box, within, result)
        if len(data) >= options.search_limit:
            side_deg = max(box.max_lon - box.min_lon, box.max_lat - box.min_lat)
            if side_deg / 2 >= options.min_search_tile_deg:
                log.debug("search box %s returned the limit (%d); splitting it", box, len(data))
                await asyncio.gather(*(one(part) for part in in_area(quarter(box), within)))
            else:
                log.warning("search box %s still returns the limit (%d) at %.5f degrees; it may be incomplete",
                            box, len(data), side_deg)
                result.saturated.append(box)

    await asyncio.gather(*(one(box) for box in in_area(split_box(area, options.search_tile_deg), within)))
    for image_id in set(result.failures) & set(result.records):  # another box placed it well
        del result.failures[image_id]
    return result
