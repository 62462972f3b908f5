"""The bundled sample area (``geo/sample_area/stuttgart``): what it covers, for the checks and reports of every layer."""

#: What the bundled sample covers (minlon, minlat, maxlon, maxlat): its 19 images and 190 road segments.
SAMPLE_EXTENT = (9.1621, 48.7633, 9.1755, 48.7788)
SAMPLE_IMAGES = 19
SAMPLE_SEGMENTS = 190


def sample_extent_text() -> str:
    """The sample's extent as ``minlon,minlat,maxlon,maxlat``, the form ``--bbox`` takes."""
    return ",".join(f"{v:g}" for v in SAMPLE_EXTENT)
