"""``city-audit``: the command line. Every command calls the same functions as the flows.

    city-audit run --bbox 9.16,48.76,9.18,48.78 --source sample --model tiny --out outputs/sample
    city-audit run --bbox 9.16,48.76,9.18,48.78 --source mapillary -m min_spacing_m=5   # needs MAPILLARY_ACCESS_TOKEN
    city-audit serve                 # serve the flow as deployment city-audit/local
    city-audit models                # list the registered backbones
"""

from __future__ import annotations

import argparse
import sys

import flows  # noqa: F401 - sets the offline Prefect defaults before prefect is imported
from geo.bbox import DEFAULT_MAX_AREA_KM2, BBoxError, parse_bbox
from warehouse.build import DEFAULT_MAX_DISTANCE_M

DEPLOYMENT_NAME = "local"


def _run(args: argparse.Namespace) -> int:
    try:
        parse_bbox(args.bbox, max_area_km2=args.max_area_km2)  # fail in milliseconds, before Prefect starts
    except BBoxError as exc:
        print(f"city-audit: error: {exc}", file=sys.stderr)
        return 2
    mapillary = None
    if args.source == "mapillary":
        from geo.mapillary import MapillaryError, MapillarySource
        from geo.mapillary.options import parse_options

        try:  # bad options or no token: say so before Prefect starts
            mapillary = parse_options(args.mapillary)
            MapillarySource(mapillary).check_token()
        except MapillaryError as exc:
            print(f"city-audit: error: {exc}", file=sys.stderr)
            return 2
    elif args.mapillary:
        print("city-audit: error: --mapillary options need --source mapillary", file=sys.stderr)
        return 2
    from flows.city_audit import city_audit

    summary = city_audit(bbox=args.bbox, source=args.source, images=args.images, roads=args.roads, model=args.model,
                         weights=args.weights, out=args.out, max_distance_m=args.max_distance_m,
                         max_images=args.max_images, max_area_km2=args.max_area_km2, batch_size=args.batch_size,
                         device=args.device, mapillary=mapillary)
    print()
    if not summary["model_trained"]:
        print(f"WARNING: model '{args.model}' is UNTRAINED (random weights): the labels are noise, not results.")
    print(f"images:                    {summary['images']}")
    print(f"matched to a road segment: {summary['matched_images']} (within {args.max_distance_m:g} m)")
    print(f"segments with predictions: {summary['segments_with_predictions']} of {summary['segments']}")
    print(f"failures:                  {summary['failures']} (see run.json)")
    print(f"outputs in {summary['out']}:")
    for name in ("segments", "images", "database", "manifest"):
        print(f"  {name:9} {summary['outputs'][name]}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from flows.city_audit import city_audit

    city_audit.serve(name=args.name, limit=args.limit)
    return 0


def _models(args: argparse.Namespace) -> int:
    from classify.backbone import BACKBONES

    for spec in BACKBONES.values():
        print(f"{spec.name:8} {spec.open_clip_name:20} {spec.summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="city-audit", description="Street-level imagery to road-segment attribute maps.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="audit a bounding box (runs the city-audit flow)")
    run.add_argument("--bbox", required=True, help="minlon,minlat,maxlon,maxlat in WGS84, or a JSON list")
    run.add_argument("--source", default="sample", help="imagery source: sample | folder | mapillary (default: sample)")
    run.add_argument("--images", help="for --source folder: a folder with images and images.parquet/images.csv")
    run.add_argument("--roads", default="sample", help="'sample' or a GeoParquet/GeoPackage/GeoJSON of road lines")
    run.add_argument("--model", default="vit-b16", help="backbone: vit-b16 (OpenAI weights) | tiny (random, offline tests)")
    run.add_argument("--weights", help="local checkpoint file for the backbone (default: $CITY_AUDIT_WEIGHTS or download)")
    run.add_argument("--out", default="outputs/city-audit", help="output folder (default: outputs/city-audit)")
    run.add_argument("--max-distance-m", type=float, default=DEFAULT_MAX_DISTANCE_M,
                     help=f"largest image-to-road distance that counts as a match (default: {DEFAULT_MAX_DISTANCE_M:g})")
    run.add_argument("--max-images", type=int, help="stop after this many images")
    run.add_argument("--max-area-km2", type=float, default=DEFAULT_MAX_AREA_KM2,
                     help=f"refuse larger boxes (default: {DEFAULT_MAX_AREA_KM2:g})")
    run.add_argument("-m", "--mapillary", action="append", metavar="KEY=VALUE",
                     help="a Mapillary option, repeatable: discovery=tiles|search, captured_after=2023-01-01, "
                          "panoramas=yes|no|only, min_spacing_m=5, thumb_size=1024, search_rpm=8000, token_secret=NAME, "
                          "... (docs/mapillary.md); the token comes from MAPILLARY_ACCESS_TOKEN")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    run.set_defaults(handler=_run)

    serve = commands.add_parser("serve", help=f"serve the flow as deployment city-audit/{DEPLOYMENT_NAME} (needs PREFECT_API_URL)")
    serve.add_argument("--name", default=DEPLOYMENT_NAME)
    serve.add_argument("--limit", type=int, default=1, help="flow runs at a time (default: 1)")
    serve.set_defaults(handler=_serve)

    models = commands.add_parser("models", help="list the registered backbones")
    models.set_defaults(handler=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
