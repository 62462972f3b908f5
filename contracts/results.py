"""What one stage hands the next, besides the tables of ``contracts.tables``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from contracts.tables import failures_frame


@dataclass
class ImageCollection:
    """The collect stage's result: the images now in the store, and the items that failed."""

    images: pd.DataFrame  # the images contract, one row per image now in the store
    failures: pd.DataFrame = field(default_factory=failures_frame)  # item_id, stage, reason
