"""Account for every discovered image: it ends as an image, a failure row with a reason, or not selected (why).

``finish`` turns the parts of an ingestion (per-tile discoveries, failed tiles, the selection
and the downloads) into one ``ImageCollection`` whose ``counts`` add up::

    discovered == selected + sum(not_selected.values()) + discover_failed
    selected   == downloaded + download_failed
    sum(failed.values()) == discover_failed + download_failed

``failed`` counts images (and id-less features or results) per reason kind ("no geometry",
"coordinates out of range", "outside bbox", "no image id", "answer for another id", "corrupt
image", "url expired", "request failed", ...). Failures of whole units (a tile or a search box
that failed or is incomplete: item ids starting with ``tile `` or ``search box ``) are not
images; they are counted in ``tiles_failed`` and ``units_failed``, and the images they hid are
unknown until the next run asks again. ``counts_add_up`` checks the identities.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import pandas as pd

from contracts.results import ImageCollection, UnitDiscovery
from contracts.tables import FAILURE_COLUMNS
from geo.mapillary.errors import reason_kind

UNIT_PREFIXES = ("tile ", "search box ")


#: One tile's discovery (records, failure rows, complete or not): the work unit of Mapillary.
TileDiscovery = UnitDiscovery


def is_unit(item_id: Any) -> bool:
    """True for the failure row of a whole tile or search box, False for one image's (or feature's)."""
    return str(item_id).startswith(UNIT_PREFIXES)


def failures_frame(rows: Iterable[tuple[str, str, str]] | pd.DataFrame) -> pd.DataFrame:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=list(FAILURE_COLUMNS))
    return frame.reindex(columns=list(FAILURE_COLUMNS)).astype({"item_id": str, "stage": str, "reason": str})


def finish(discoveries: list[TileDiscovery], unit_failures: list[tuple[str, str, str]], selected: pd.DataFrame,
           not_selected: dict[str, int], downloaded: ImageCollection, tiles: int) -> ImageCollection:
    """One collection (images, every failure row) with ``counts`` that add up; see the module docstring."""
    frames = [d.records for d in discoveries if len(d.records)]
    record_ids = set(pd.concat([f["image_id"] for f in frames]).astype(str)) if frames else set()
    discover_rows: dict[str, tuple[str, str, str]] = {}
    units: list[tuple[str, str, str]] = list(unit_failures)
    for discovery in discoveries:
        for row in discovery.failures:
            if is_unit(row[0]):
                units.append(row)
            elif row[0] not in record_ids:  # an image that another tile or box placed well is no failure
                discover_rows.setdefault(row[0], row)
    selected_ids = set(selected["image_id"].astype(str)) if len(selected) else set()
    images = downloaded.images
    image_ids = set(images["image_id"].astype(str)) if len(images) else set()
    download_rows: dict[str, tuple[str, str, str]] = {}
    for row in failures_frame(downloaded.failures).itertuples(index=False, name=None):
        if is_unit(row[0]):
            units.append(row)
        elif row[0] not in image_ids:
            download_rows.setdefault(row[0], row)
    missing = selected_ids - image_ids - set(download_rows)
    for image_id in sorted(missing):  # selected, neither downloaded nor failed: never silent
        download_rows[image_id] = (image_id, "mapillary download", "not downloaded: no image and no failure recorded")
    failed = Counter(reason_kind(r[2]) for r in [*discover_rows.values(), *download_rows.values()])
    counts = {
        "tiles": tiles,
        "tiles_failed": len({r[0] for r in units if str(r[0]).startswith("tile ")}),
        "units_failed": len(units),
        "discovered": len(record_ids) + len(discover_rows),
        "selected": len(selected_ids),
        "not_selected": dict(sorted(not_selected.items())),
        "downloaded": len(image_ids & selected_ids),
        "discover_failed": len(discover_rows),
        "download_failed": len(download_rows),
        "failed": dict(sorted(failed.items())),
    }
    rows = [*units, *discover_rows.values(), *download_rows.values()]
    return ImageCollection(images, failures_frame(rows), counts)


def counts_add_up(counts: dict[str, Any]) -> bool:
    """The identities of the module docstring hold for ``counts``."""
    return (counts["discovered"] == counts["selected"] + sum(counts["not_selected"].values()) + counts["discover_failed"]
            and counts["selected"] == counts["downloaded"] + counts["download_failed"]
            and sum(counts["failed"].values()) == counts["discover_failed"] + counts["download_failed"])
