"""``city-audit``: the command line. Every command calls the same functions as the flows.

    city-audit run --bbox 9.16,48.76,9.18,48.78 --source sample --model tiny --out outputs/sample
    city-audit run ... --heads outputs/heads     # trained MHAdapter heads, zero-shot for the rest
    city-audit train --attribute weather --data GSS_ROOT --out outputs/heads
    city-audit evaluate --attribute weather --data GSS_ROOT --heads outputs/heads --out outputs/eval
    city-audit adapt --method microclip --images outputs/sample --attribute weather --out outputs/adapted
    city-audit run ... --adapt fair  # adapt on the run's own images first, then predict with the adapted heads
    city-audit run --bbox 9.16,48.76,9.18,48.78 --source mapillary -m min_spacing_m=5   # needs MAPILLARY_ACCESS_TOKEN
    city-audit serve                 # serve the flow as deployment city-audit/local
    city-audit models                # list the registered backbones
"""

from __future__ import annotations

import argparse
import sys

import flows  # noqa: F401 - sets the offline Prefect defaults before prefect is imported
from classify.schema import ATTRIBUTES
from geo.bbox import DEFAULT_MAX_AREA_KM2, BBoxError, parse_bbox
from warehouse.build import DEFAULT_HEADING_PENALTY_M, DEFAULT_MAX_DISTANCE_M

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
                         device=args.device, heads=args.heads, feature_cache=args.feature_cache,
                         device_decode=args.gpu_decode, adapt=args.adapt,
                         adapt_attributes=args.adapt_attributes, adapt_options=_adapt_options(args),
                         road_classes=args.road_classes, max_segment_length_m=args.max_segment_length_m,
                         heading_penalty_m=args.heading_penalty_m, slice_by_year=args.by_year,
                         partition_by_tile=args.tiles, cell_size_m=args.cell_size_m, mapillary=mapillary)
    print()
    if not summary["model_trained"]:
        print(f"WARNING: model '{args.model}' is UNTRAINED (random weights): the labels are noise, not results.")
    print(f"images:                    {summary['images']}")
    print(f"matched to a road segment: {summary['matched_images']} (within {args.max_distance_m:g} m)")
    print(f"segments with predictions: {summary['segments_with_predictions']} of {summary['segments']}")
    print(f"failures:                  {summary['failures']} (see run.json)")
    if summary.get("adapted"):
        adapted = summary["adapted"]
        print(f"adapted ({adapted['method_name']}, on this run's {adapted['n_images']} images): "
              f"{', '.join(adapted['checkpoints'])} -> {adapted['heads']}")
    print(f"outputs in {summary['out']}:")
    for name in ("segments", "images", "geopackage", "styles", "raster", "map_png", "map_html", "report", "database",
                 "manifest", "segment_tiles", "image_tiles"):
        if name in summary["outputs"]:
            print(f"  {name:13} {summary['outputs'][name]}")
    return 0


def _user_errors():
    from classify.adapted_visual import AdaptationError
    from classify.backbone import BackboneError
    from classify.checkpoints import CheckpointError
    from classify.descriptions import DescriptionError
    from classify.labels import LabelFileError
    from classify.train import TrainingError

    return BackboneError, CheckpointError, LabelFileError, TrainingError, AdaptationError, DescriptionError


def _adapt_options(args: argparse.Namespace) -> dict:
    """The ``AdaptConfig`` overrides given on the command line (None = keep the reference value)."""
    names = {"epochs": "epochs", "max_steps": "max_steps", "batch_size_adapt": "batch_size", "lr": "lr",
             "n_crops": "n_crops", "strong": "strong", "seed": "seed", "num_workers": "num_workers"}
    return {field: getattr(args, name) for name, field in names.items() if getattr(args, name, None) is not None}


def _adapt(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from classify.adapt import AdaptConfig, adapt_images, get_method, image_files, method_config
    from classify.adapt_eval import adaptation_details, adaptation_table, compare_adapted
    from classify.backbone import load_backbone

    attributes = list(ATTRIBUTES) if args.attribute == ["all"] else args.attribute
    try:
        spec = get_method(args.method)
        config = replace(AdaptConfig(), **_adapt_options(args))
        files = image_files(args.images)
        backbone = load_backbone(args.model, weights=args.weights, device=args.device)
        print(f"{spec.display_name}: adapting {', '.join(attributes)} on {len(files)} unlabelled images")
        results = adapt_images(args.method, files, attributes, backbone, args.out, config=config,
                               method_config=method_config(args.method, args.set))
        reports = [compare_adapted(name, args.eval_data, backbone, args.out, args.out, split=args.eval_split)
                   for name in attributes] if args.eval_data else []
    except _user_errors() as exc:
        print(f"city-audit: error: {exc}", file=sys.stderr)
        return 2
    if not backbone.trained:
        print(f"WARNING: model '{args.model}' is UNTRAINED (random weights): these adapted heads are a pipeline "
              f"check, not models.")
    for name, result in results.items():
        counts = result.history[-1]["pseudo_label_counts"] if result.history else {}
        how = "reused an identical earlier adaptation" if result.reused else \
            f"{result.history[-1]['steps'] if result.history else 0} steps"
        print(f"{name}: {how}, last-epoch pseudo-labels {counts} -> {result.checkpoint}")
    if reports:
        print(f"zero-shot vs {spec.display_name} on {args.eval_data} ({args.eval_split}):")
        print(adaptation_table(reports))
        print(adaptation_details(reports))
    return 0


def _train(args: argparse.Namespace) -> int:
    from classify.backbone import load_backbone
    from classify.mhadapter import AdapterConfig
    from classify.train import REFERENCE_ADAPTERS, TrainConfig, train_attribute, with_overrides

    try:
        config = with_overrides(TrainConfig(), mode=args.mode, epochs=args.epochs, batch_size=args.batch_size,
                                lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
                                class_weighting=args.class_weighting, seed=args.seed, num_workers=args.num_workers)
        reference = REFERENCE_ADAPTERS[args.attribute]
        adapter = AdapterConfig(heads=args.attention_heads or reference.heads, blend=args.blend or reference.blend)
        backbone = load_backbone(args.model, weights=args.weights, device=args.device)
        result = train_attribute(args.attribute, args.data, backbone, args.out, config=config, adapter=adapter,
                                 resume=args.resume, cache_dir=args.cache_dir)
    except _user_errors() as exc:
        print(f"city-audit: error: {exc}", file=sys.stderr)
        return 2
    best = result.fit.best_metrics
    if not backbone.trained:
        print(f"WARNING: model '{args.model}' is UNTRAINED (random weights): this head is a pipeline check, not a model.")
    _warn_unverified(backbone)
    print(f"{args.attribute}: trained on {result.n_train}, validated on {result.n_val} images ({config.mode} mode)")
    print(f"best epoch {result.fit.best_epoch}: val accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f}"
          f"{' (stopped early)' if result.fit.stopped_early else ''}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _warn_unverified(backbone) -> None:
    if backbone.weights_file_sha256 and not backbone.weights_verified:
        print(f"WARNING: backbone weights {backbone.weights_source} (sha256 {backbone.weights_file_sha256[:16]}...) are "
              f"UNVERIFIED: nothing checked that they are real {backbone.spec.name} weights; set "
              f"CITY_AUDIT_WEIGHTS_VERIFIED=<their sha256> to vouch for them")


def _evaluate(args: argparse.Namespace) -> int:
    from classify.backbone import load_backbone
    from classify.evaluate import evaluate_attribute

    try:
        backbone = load_backbone(args.model, weights=args.weights, device=args.device)
        report = evaluate_attribute(args.attribute, args.data, backbone, args.out, heads_dir=args.heads,
                                    split=args.split, train_data=args.train_data, cache_dir=args.cache_dir,
                                    drop_train_overlap=args.drop_train_overlap)
    except _user_errors() as exc:
        print(f"city-audit: error: {exc}", file=sys.stderr)
        return 2
    if not backbone.trained:
        print(f"WARNING: model '{args.model}' is UNTRAINED (random weights): these numbers are not results.")
    _warn_unverified(backbone)
    print(f"{args.attribute}, {args.split} split, {report['n']} images: {report['class_counts']}")
    print(report["table"])
    for method, note in report["notes"].items():
        print(f"note: {method}: {note}")
    print(f"report: {report['report_path']} (confusion matrices beside it)")
    if args.adapted:
        from classify.adapt_eval import adaptation_details, adaptation_table, compare_adapted

        try:
            adapted = compare_adapted(args.attribute, args.data, backbone, args.adapted, args.out, split=args.split)
        except _user_errors() as exc:
            print(f"city-audit: error: {exc}", file=sys.stderr)
            return 2
        print(f"zero-shot vs {adapted['adapted_method']} (heads in {args.adapted}):")
        print(adaptation_table([adapted]))
        print(adaptation_details([adapted]))
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vit-b16", help="backbone: a name from `city-audit models` (vit-b16, "
                        "vit-l14, ..., tiny) or an open_clip ARCH/PRETRAINED pair such as ViT-B-16/dfn2b")
    parser.add_argument("--weights", help="local checkpoint file for the backbone (default: $CITY_AUDIT_WEIGHTS or download)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")


def _add_adapt_loop_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="self-training epochs (default 15)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (bounded time)")
    parser.add_argument("--adapt-batch-size", dest="batch_size_adapt", type=int, help="self-training batch (default 64)")
    parser.add_argument("--lr", type=float, help="default 1e-4")
    parser.add_argument("--crops", dest="n_crops", type=int, help="random crops per image (default 8)")
    parser.add_argument("--strong", choices=["auto", "randaugment", "geometric"],
                        help="student augmentation (default auto: geometric for photometric attributes)")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--num-workers", type=int, help="decoding worker processes")


def _serve(args: argparse.Namespace) -> int:
    from flows.city_audit import city_audit

    city_audit.serve(name=args.name, limit=args.limit)
    return 0


def _models(args: argparse.Namespace) -> int:
    from classify.backbone import BACKBONES

    print("curated backbones (--model NAME); any other open_clip model: --model ARCH/PRETRAINED, e.g. ViT-B-16/dfn2b")
    for spec in BACKBONES.values():
        print(spec.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="city-audit", description="Street-level imagery to road-segment attribute maps.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="audit a bounding box (runs the city-audit flow)")
    run.add_argument("--bbox", required=True, help="minlon,minlat,maxlon,maxlat in WGS84, or a JSON list")
    run.add_argument("--source", default="sample", help="imagery source: sample | folder | mapillary (default: sample)")
    run.add_argument("--images", help="for --source folder: a folder with images and images.parquet/images.csv")
    run.add_argument("--roads", default="sample",
                     help="'sample', a local OSM extract (.osm.pbf), or a GeoParquet/GeoPackage/GeoJSON of road lines")
    run.add_argument("--road-classes", help="for .osm.pbf: comma-separated highway values to keep (default: the drivable "
                                            "network, living streets, service and pedestrian streets)")
    run.add_argument("--max-segment-length-m", type=float,
                     help="for .osm.pbf: split segments longer than this into equal parts (default: 100)")
    run.add_argument("--heading-penalty-m", type=float, default=DEFAULT_HEADING_PENALTY_M,
                     help="a road across a camera's heading counts this many metres further away when matching "
                          f"(default: {DEFAULT_HEADING_PENALTY_M:g}; 0 = plain nearest)")
    run.add_argument("--by-year", action="store_true", help="also aggregate each segment per capture year")
    run.add_argument("--tiles", action="store_true",
                     help="also write GeoParquet partitioned by z14 tile (tiles/segments/tile=.../<run_id>.parquet)")
    run.add_argument("--cell-size-m", type=float, default=50.0, help="cell size of coverage.tif (default: 50)")
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
    run.add_argument("--heads", help="folder of trained head checkpoints (city-audit train); zero-shot for the rest")
    run.add_argument("--feature-cache", help="folder that keeps backbone outputs per image for re-running heads")
    run.add_argument("--gpu-decode", action="store_true", help="decode JPEGs on the device (nvJPEG on CUDA)")
    run.add_argument("--adapt", choices=["microclip", "fair"], help="adapt to this run's own images first (microCLIP "
                     "or FAIR-style (reconstructed)) and predict with the adapted heads")
    run.add_argument("--adapt-attributes", nargs="+", choices=list(ATTRIBUTES), metavar="ATTRIBUTE",
                     help="attributes to adapt (default: all)")
    _add_adapt_loop_options(run)
    run.set_defaults(handler=_run)

    adapt = commands.add_parser("adapt", help="unsupervised adaptation to a city's own images: microCLIP or "
                                "FAIR-style (reconstructed)")
    adapt.add_argument("--method", required=True, choices=["microclip", "fair"],
                       help="microclip | fair (FAIR-style (reconstructed): FAIR's code is not public)")
    adapt.add_argument("--images", required=True, help="a finished run's output folder (images/ + images.parquet) "
                       "or a folder of images")
    adapt.add_argument("--attribute", required=True, nargs="+", choices=list(ATTRIBUTES) + ["all"],
                       metavar="ATTRIBUTE", help=f"one or more of {', '.join(ATTRIBUTES)}, or all")
    adapt.add_argument("--out", default="outputs/adapted", help="heads folder: <attribute>.safetensors + .json")
    adapt.add_argument("--eval-data", help="labelled set (GSS folder or path,label CSV): print zero-shot vs adapted")
    adapt.add_argument("--eval-split", choices=["test", "train", "val"], default="test")
    adapt.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="method options, e.g. gamma=0.3 fairness=prior "
                       "(microclip) or weighting=margin top_k=2 (fair); see classify/microclip.py, classify/fair.py")
    _add_model_options(adapt)
    _add_adapt_loop_options(adapt)
    adapt.set_defaults(handler=_adapt)

    train = commands.add_parser("train", help="train a CLIP-MHAdapter head for one attribute")
    train.add_argument("--attribute", required=True, choices=list(ATTRIBUTES))
    train.add_argument("--data", required=True, help="Global StreetScapes folder (train/<attribute>.csv) or a path,label CSV")
    train.add_argument("--out", default="outputs/heads", help="heads folder: writes <attribute>.safetensors + .json")
    _add_model_options(train)
    train.add_argument("--mode", choices=["augment", "cached"], help="augment (reference, default) | cached "
                       "(backbone once, no image augmentation: fast)")
    train.add_argument("--epochs", type=int, help="default 100")
    train.add_argument("--batch-size", type=int, help="default 256")
    train.add_argument("--lr", type=float, help="default 5e-4")
    train.add_argument("--weight-decay", type=float, help="default 5e-4")
    train.add_argument("--patience", type=int, help="early stopping: epochs without val macro-F1 gain (default 10)")
    train.add_argument("--class-weighting", choices=["none", "inverse"], help="default inverse")
    train.add_argument("--attention-heads", type=int, help="default: the reference setting of the attribute")
    train.add_argument("--blend", type=float, help="r in (0,1); default: the reference setting of the attribute")
    train.add_argument("--seed", type=int, help="default 42")
    train.add_argument("--num-workers", type=int, help="decoding worker processes")
    train.add_argument("--cache-dir", help="keep backbone outputs per image here (reused by cached mode and evaluate)")
    train.add_argument("--resume", action="store_true", help="continue from the last finished epoch")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="compare ZeroR, zero-shot, linear probe and MHAdapter on one split")
    evaluate.add_argument("--attribute", required=True, choices=list(ATTRIBUTES))
    evaluate.add_argument("--data", required=True, help="Global StreetScapes folder or a path,label CSV")
    evaluate.add_argument("--heads", help="heads folder with the attribute's checkpoint")
    evaluate.add_argument("--split", choices=["test", "val"], default="test",
                          help="test: GSS test CSV or the CSV itself; val: the held-out part of the training labels")
    evaluate.add_argument("--train-data", help="training labels for the linear probe (default: --data's train split)")
    evaluate.add_argument("--out", default="outputs/evaluation", help="folder for the JSON report and confusion PNGs")
    evaluate.add_argument("--cache-dir", help="backbone feature cache (shared with train)")
    evaluate.add_argument("--drop-train-overlap", action="store_true",
                          help="score only the images the heads did not train on (default: refuse such a split)")
    evaluate.add_argument("--adapted", help="heads folder from city-audit adapt: also print zero-shot vs adapted")
    _add_model_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    serve = commands.add_parser("serve", help=f"serve the flow as deployment city-audit/{DEPLOYMENT_NAME} (needs PREFECT_API_URL)")
    serve.add_argument("--name", default=DEPLOYMENT_NAME)
    serve.add_argument("--limit", type=int, default=1, help="flow runs at a time (default: 1)")
    serve.set_defaults(handler=_serve)

    models = commands.add_parser("models", help="list the curated backbones: image size, widths, MHAdapter "
                                 "parameters, cost")
    models.set_defaults(handler=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
