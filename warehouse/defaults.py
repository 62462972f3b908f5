"""Default matching and publishing settings, importable without DuckDB (the run configuration reads them)."""

#: Largest image-to-road distance that counts as a match.
DEFAULT_MAX_DISTANCE_M = 25.0
#: A segment at right angles to a non-panoramic camera's heading counts as this much further away.
DEFAULT_HEADING_PENALTY_M = 15.0
#: Cell size of the coverage GeoTIFF.
DEFAULT_CELL_SIZE_M = 50.0
