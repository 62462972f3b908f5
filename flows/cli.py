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
import importlib
import sys
import threading
import traceback

import flows  # noqa: F401 - sets the offline Prefect defaults before prefect is imported
from classify.registry import BACKBONES, adaptation_methods
from classify.schema import ATTRIBUTES
from contracts.errors import CityAuditError
from contracts.notices import untrained_warning
from geo.bbox import bbox_argv
from flows.config import GROUPS, AdaptationConfig, ModelConfig, RunConfig, cli_flag, run_config
from flows.gss import add_gss_command

DEPLOYMENT_NAME = "local"


def _run(args: argparse.Namespace) -> int:
    config = run_config(**config_options(args))  # every value checked in milliseconds, before Prefect starts
    if config.imagery.source == "mapillary":
        from geo.mapillary.options import resolve_token

        resolve_token(config.imagery.mapillary.get("token_secret"))  # no token: say so before Prefect starts
    summary = _start_flow(config)
    _print_summary(config, summary)
    return 0


#: What the flow's model stages import on use (torch, open_clip, timm: ~6 s), loaded ahead by ``preload``.
MODEL_MODULES = ("classify.stage", "classify.checkpoints")


def preload(modules: tuple[str, ...]) -> threading.Thread:
    """Import ``modules`` in a background thread, started while the Prefect server comes up: the flow's
    first stages (collection, roads) then run while torch loads, and the model stages find it loaded.

    It runs at the run's own priority: at ``nice`` +10 the server came up sooner on a busy machine,
    but every other process there went before the import too, and the backbone stage then waited
    4-9 s for it (the total got longer). An import error is left to the stage that imports the
    module for real, with its own message; the thread is not a daemon, so the interpreter never
    exits in the middle of an import."""
    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 - the stage's own import reports it
                continue

    thread = threading.Thread(target=run, name="city-audit-preload")
    thread.start()
    return thread


def _start_flow(config: RunConfig) -> dict:
    """Run the flow against the run's Prefect API (``flows.server``). A server of our own starts first;
    while it comes up (4-5 s on an idle 2-core machine) this process imports the flow (Prefect, pandas, DuckDB:
    ~2 s) and starts importing torch and open_clip in the background, which the model stages use."""
    from flows.server import prefect_api

    with prefect_api() as server:
        from flows.city_audit import city_audit  # overlaps the server's start
        from prefect.settings import PREFECT_API_URL, temporary_settings

        preload(MODEL_MODULES + (("classify.adapt",) if config.adaptation.adapt else ()))
        url = server.ready()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            return city_audit(**config.flow_parameters())


def _print_summary(config: RunConfig, summary: dict) -> None:
    print()
    if not summary["model_trained"]:
        print(f"WARNING: {untrained_warning(config.model.model, 'the labels are')}")
    print(f"images:                    {summary['images']}")
    print(f"matched to a road segment: {summary['matched_images']} (within {config.matching.max_distance_m:g} m)")
    print(f"segments with predictions: {summary['segments_with_predictions']} of {summary['segments']}")
    print(f"failures:                  {summary['failures']} (see run.json)")
    for cause in summary.get("empty_run") or ():
        print(f"nothing to map: {cause}")
    if summary.get("adapted"):
        adapted = summary["adapted"]
        print(f"adapted ({adapted['method_name']}, on this run's {adapted['n_images']} images): "
              f"{', '.join(adapted['checkpoints'])} -> {adapted['heads']}")
    print(f"outputs in {summary['out']}:")
    for name in ("segments", "images", "geopackage", "styles", "raster", "map_png", "map_html", "report", "database",
                 "manifest", "segment_tiles", "image_tiles"):
        if name in summary["outputs"]:
            print(f"  {name:13} {summary['outputs'][name]}")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. min_spacing_m=5)")
    return key.strip(), value.strip()


def addconfig_options(parser: argparse.ArgumentParser) -> None:
    """One option per ``RunConfig`` field, in group order, with the field's name, default and help.

    Values reach the configuration as typed on the command line; its fields convert and check them."""
    parser.add_argument("--bbox", default=None, help=RunConfig.model_fields["bbox"].description)
    for group, model in GROUPS.items():
        options = parser.add_argument_group(group)
        for name, field in model.model_fields.items():
            flag, dest = cli_flag(group, name), f"config.{name}"
            if field.annotation is bool:
                options.add_argument(flag, dest=dest, action="store_true", default=argparse.SUPPRESS,
                                     help=field.description)
            elif name == "mapillary":
                options.add_argument("-m", flag, dest=dest, action="append", type=_key_value, metavar="KEY=VALUE",
                                     default=argparse.SUPPRESS, help=field.description)
            elif name == "adapt_attributes":
                options.add_argument(flag, dest=dest, nargs="+", choices=list(ATTRIBUTES), metavar="ATTRIBUTE",
                                     default=argparse.SUPPRESS, help=field.description)
            else:
                options.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=field.description)


def config_options(args: argparse.Namespace) -> dict:
    """The run options given on the command line, by configuration field name."""
    options = {"bbox": args.bbox}
    for key, value in vars(args).items():
        if key.startswith("config."):
            options[key.removeprefix("config.")] = dict(value) if key == "config.mapillary" else value
    return options


def _adapt(args: argparse.Namespace) -> int:
    from classify.adapt_eval import adaptation_details, adaptation_table
    from classify.jobs import adapt_heads

    loop = AdaptationConfig(**{k.removeprefix("config."): v for k, v in vars(args).items() if k.startswith("config.")})
    job = adapt_heads(args.method, args.images, None if args.attribute == ["all"] else args.attribute, args.out,
                      model=args.model, weights=args.weights, device=args.device, options=loop.loop_options(),
                      method_options=args.set, eval_data=args.eval_data, eval_split=args.eval_split,
                      on_start=lambda name, n: print(f"{name}: adapting on {n} unlabelled images"))
    _warn_untrained_or_unverified(job.backbone, args.model, "these adapted heads are")
    for name, result in job.results.items():
        counts = result.history[-1]["pseudo_label_counts"] if result.history else {}
        how = "reused an identical earlier adaptation" if result.reused else \
            f"{result.history[-1]['steps'] if result.history else 0} steps"
        print(f"{name}: {how}, last-epoch pseudo-labels {counts} -> {result.checkpoint}")
    if job.reports:
        print(f"zero-shot vs {job.method_name} on {args.eval_data} ({args.eval_split}):")
        print(adaptation_table(job.reports))
        print(adaptation_details(job.reports))
    return 0


def _train(args: argparse.Namespace) -> int:
    from classify.jobs import train_head

    job = train_head(args.attribute, args.data, args.out, model=args.model, weights=args.weights, device=args.device,
                     mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     weight_decay=args.weight_decay, patience=args.patience, class_weighting=args.class_weighting,
                     attention_heads=args.attention_heads, blend=args.blend, seed=args.seed,
                     num_workers=args.num_workers, resume=args.resume, cache_dir=args.cache_dir)
    result, best = job.result, job.result.fit.best_metrics
    _warn_untrained_or_unverified(job.backbone, args.model, "this head is")
    print(f"{args.attribute}: trained on {result.n_train}, validated on {result.n_val} images ({job.mode} mode)")
    print(f"best epoch {result.fit.best_epoch}: val accuracy {best['accuracy']:.4f}, macro-F1 {best['macro_f1']:.4f}"
          f"{' (stopped early)' if result.fit.stopped_early else ''}")
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _warn_untrained_or_unverified(backbone, model: str, what: str) -> None:
    """The untrained warning, or the warning that a --weights file is unverified, where either applies."""
    if not backbone.trained:
        print(f"WARNING: {untrained_warning(model, what)}")
    if backbone.weights_file_sha256 and not backbone.weights_verified:
        print(f"WARNING: backbone weights {backbone.weights_source} (sha256 {backbone.weights_file_sha256[:16]}...) are "
              f"UNVERIFIED: nothing checked that they are real {backbone.spec.name} weights; set "
              f"CITY_AUDIT_WEIGHTS_VERIFIED=<their sha256> to vouch for them")


def _evaluate(args: argparse.Namespace) -> int:
    from classify.backbone import load_backbone
    from classify.evaluate import evaluate_attribute

    backbone = load_backbone(args.model, weights=args.weights, device=args.device)
    report = evaluate_attribute(args.attribute, args.data, backbone, args.out, heads_dir=args.heads,
                                split=args.split, train_data=args.train_data, cache_dir=args.cache_dir,
                                drop_train_overlap=args.drop_train_overlap)
    _warn_untrained_or_unverified(backbone, args.model, "these numbers are")
    print(f"{args.attribute}, {args.split} split, {report['n']} images: {report['class_counts']}")
    print(report["table"])
    for method, note in report["notes"].items():
        print(f"note: {method}: {note}")
    print(f"report: {report['report_path']} (confusion matrices beside it)")
    if args.adapted:
        from classify.adapt_eval import adaptation_details, adaptation_table, compare_adapted

        adapted = compare_adapted(args.attribute, args.data, backbone, args.adapted, args.out, split=args.split)
        print(f"zero-shot vs {adapted['adapted_method']} (heads in {args.adapted}):")
        print(adaptation_table([adapted]))
        print(adaptation_details([adapted]))
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --weights and --device, with the run configuration's help and defaults."""
    for name in ("model", "weights", "device"):
        field = ModelConfig.model_fields[name]
        parser.add_argument(cli_flag("model", name), default=field.default, help=field.description)


def _add_adapt_loop_options(parser: argparse.ArgumentParser) -> None:
    """The self-training options of ``AdaptationConfig`` (the same as ``run --adapt`` takes)."""
    for name, field in AdaptationConfig.model_fields.items():
        if name not in ("adapt", "adapt_attributes"):
            parser.add_argument(cli_flag("adaptation", name), dest=f"config.{name}", default=argparse.SUPPRESS,
                                help=field.description, metavar=name.upper())


def _serve(args: argparse.Namespace) -> int:
    from flows.city_audit import city_audit

    city_audit.serve(name=args.name, limit=args.limit)
    return 0


def _models(args: argparse.Namespace) -> int:
    print("curated backbones (--model NAME); any other open_clip model: --model ARCH/PRETRAINED, e.g. ViT-B-16/dfn2b")
    for spec in BACKBONES.values():
        print(spec.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="city-audit", description="Street-level imagery to road-segment attribute maps.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="audit a bounding box (runs the city-audit flow)")
    addconfig_options(run)
    run.set_defaults(handler=_run)

    adapt = commands.add_parser("adapt", help="unsupervised adaptation to a city's own images: microCLIP or "
                                "FAIR-style (reconstructed)")
    adapt.add_argument("--method", required=True, choices=adaptation_methods(),
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

    evaluate = commands.add_parser("evaluate", help="compare ZeroR, zero-shot, linear probe, CLIP-Adapter, CoOp and "
                                                    "the trained head on one split")
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
    add_gss_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error the user can fix ends it with its message on one line and exit code 2."""
    args = build_parser().parse_args(bbox_argv(sys.argv[1:] if argv is None else argv))
    try:
        return args.handler(args)
    except CityAuditError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"city-audit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
