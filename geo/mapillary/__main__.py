"""Fetch Mapillary images for a bbox without the rest of the pipeline (resumable; no Prefect).

    python -m geo.mapillary --bbox 9.16,48.76,9.18,48.78 --store outputs/mly/images \
        [--manifest outputs/mly/work/mapillary-manifest.sqlite] [-o min_spacing_m=5 -o thumb_size=1024 ...]

Prints one JSON line: ``images``, ``failures`` (rows) and ``counts`` (discovered, selected,
not_selected, downloaded, failed per reason: they add up, see ``geo.mapillary.counts``). A tile
that cannot be decoded is retried, then a failure row; the run goes on. Exit code 2 on a bad
bbox or options, 3 on a token problem (also an error-190 body in an HTTP 200). ``--bbox`` takes
a western or southern box as given (``--bbox -122.5,37.7,-122.3,37.8``).
"""

from __future__ import annotations

import argparse
import json
import sys

from geo.bbox import BBoxError, bbox_argv, parse_bbox
from geo.mapillary.errors import InvalidTokenError, MissingTokenError, OptionsError
from geo.mapillary.options import parse_options
from geo.mapillary.source import MapillarySource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geo.mapillary", description=__doc__.splitlines()[0])
    parser.add_argument("--bbox", required=True)
    parser.add_argument("--store", required=True, help="folder for the images")
    parser.add_argument("--manifest", help="resume manifest (default: <store>/../work/mapillary-manifest.sqlite)")
    parser.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="a MapillaryOptions field")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(bbox_argv(sys.argv[1:] if argv is None else argv))
    try:
        bbox = parse_bbox(args.bbox)
        source = MapillarySource(parse_options(args.option))
    except (BBoxError, OptionsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = source.ingest(bbox, args.store, args.manifest, progress=not args.no_progress)
    except (MissingTokenError, InvalidTokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps({"images": len(result.images), "failures": len(result.failures), "counts": result.counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
