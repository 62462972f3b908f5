"""``city-audit gss``: from a Mapillary token (and a GPU) to the paper's eight heads, resumably.

1. **Labels** — the Global StreetScapes manual labels, ``manual_labels/{train,test}/<attribute>.csv`` of the
   Hugging Face dataset ``NUS-UAL/global-streetscapes``, through ``huggingface_hub`` (its cache, resumable
   downloads; ``--hf-endpoint`` / ``$HF_ENDPOINT`` for a mirror). A cached file is used without asking the
   Hub again. Rows are keyed by ``uuid``; ``source`` + ``orig_id`` (the Mapillary image id) come from the
   label file or, where it lacks them, from the dataset's ``data/metadata_common_attributes.csv``.
2. **Images** — the labelled Mapillary images by id, through the product's own Mapillary client
   (``geo.mapillary.download``: per-endpoint rate limits, retries, verified atomic files, the sqlite
   manifest that makes a rerun skip what is there). KartaView rows are counted and skipped.
3. **Split** — the dataset's own train/test files; the train file is split 80/20 (seeded, stratified)
   into train/val by the trainer, as the reference does. Rows whose image could not be fetched are
   dropped with a count.
4. **Heads** — ``classify.jobs.gss_heads``: one backbone, one pass per image (feature cache), the 8
   MHAdapter heads, each evaluated on its test split beside ZeroR, zero-shot, the linear probe,
   CLIP-Adapter and CoOp, and a table of the paper's accuracies beside ours.

Killed and rerun it skips every label file and image it has, every feature it computed, and resumes
training from the last finished epoch. ``--plan`` stops after the labels and prints what the rest costs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from classify.schema import ATTRIBUTES
from contracts.errors import CityAuditError
from contracts.files import write_text_atomic

GSS_REPO = "NUS-UAL/global-streetscapes"
LABEL_FILE = "manual_labels/{split}/{attribute}.csv"
ID_MAP_FILE = "data/metadata_common_attributes.csv"  # uuid, source, orig_id, ... for all 10 M images
SPLITS = ("train", "test")
#: measured: the 25 GSS sample JPEGs (2048 px wide) average 0.52 MB; JPEG size scales about with pixels
THUMB_MB = {256: 0.52 / 64, 1024: 0.52 / 4, 2048: 0.52, "original": 2.0}
#: backbone outputs kept per image in fp32 (pooled E + 196 x W patch tokens), ViT-B/16: (512 + 196*768)*4 bytes
FEATURE_MB_VIT_B16 = (512 + 196 * 768) * 4 / 1e6
#: ESTIMATE, not measured (no GPU was available): ViT-B/16 bf16 images per second end to end on one modern GPU
#: with 16 decode workers, bound by JPEG decoding; the run measures the real backbone time (``cost_measured``)
ASSUMED_GPU_IMAGES_PER_S = 2000.0


class GssError(CityAuditError):
    """The Global StreetScapes labels cannot be had or used: missing file, unreachable Hub, missing columns."""


def fetch_dataset_file(filename: str, *, cache_dir: str | None, endpoint: str | None, revision: str) -> tuple[Path, bool]:
    """A file of the GSS dataset repository, from the local huggingface_hub cache when it is there (no request),
    else downloaded into it. Returns (path, downloaded now)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    cached = try_to_load_from_cache(GSS_REPO, filename, cache_dir=cache_dir, revision=revision, repo_type="dataset")
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached), False
    try:
        path = hf_hub_download(GSS_REPO, filename, repo_type="dataset", revision=revision, cache_dir=cache_dir,
                               endpoint=endpoint)
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) offline, or the Hub did not answer
        raise GssError(f"{filename!r} is not in the huggingface_hub cache and cannot be downloaded (offline: "
                       f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, or the endpoint "
                       f"{endpoint or 'huggingface.co'} is unreachable); connect and rerun") from None
    except EntryNotFoundError:
        raise GssError(f"{GSS_REPO}@{revision} has no file {filename!r}; check --revision and the attribute") from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GssError(f"cannot download {filename!r} from {endpoint or 'the Hugging Face Hub'} ({first}); check the "
                       f"connection or --hf-endpoint, then rerun (finished files are kept)") from None
    return Path(path), True


def read_label_rows(path: Path, attribute: str) -> tuple[list[dict], bool]:
    """Rows ``{uuid, source, orig_id, label}`` of one label file; True when it carries source/orig_id itself."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "uuid" not in columns or attribute not in columns:
            raise GssError(f"{path}: needs columns 'uuid' and {attribute!r} (has {columns})")
        has_ids = "source" in columns and "orig_id" in columns
        rows = [{"uuid": r["uuid"].strip(), "label": r[attribute], "source": (r.get("source") or "").strip(),
                 "orig_id": (r.get("orig_id") or "").strip()} for r in reader]
    return rows, has_ids


def fill_ids(rows: list[dict], id_map: Path) -> None:
    """Set ``source``/``orig_id`` of the rows that lack them from the dataset's id table (streamed once)."""
    wanted = {r["uuid"] for r in rows if not r["orig_id"]}
    found = {}
    with id_map.open(newline="", encoding="utf-8-sig") as handle:
        for record in csv.DictReader(handle):
            if record["uuid"] in wanted:
                found[record["uuid"]] = (record["source"].strip(), record["orig_id"].strip())
    for row in rows:
        if not row["orig_id"] and row["uuid"] in found:
            row["source"], row["orig_id"] = found[row["uuid"]]


def fetch_labels(attributes: list[str], *, cache_dir, endpoint, revision: str, limit: int | None = None) -> dict:
    """Every label file of ``attributes`` (train and test), ids filled in. Returns {attribute: {split: rows}},
    with the files and download counts under ``"_files"``."""
    labels, files, downloads = {}, {}, 0
    needs_map = []
    for attribute in attributes:
        labels[attribute] = {}
        for split in SPLITS:
            name = LABEL_FILE.format(split=split, attribute=attribute)
            path, fresh = fetch_dataset_file(name, cache_dir=cache_dir, endpoint=endpoint, revision=revision)
            downloads += fresh
            rows, has_ids = read_label_rows(path, attribute)
            rows = rows[:limit] if limit else rows
            labels[attribute][split], files[name] = rows, str(path)
            if not has_ids:
                needs_map.extend(rows)
    if needs_map:
        path, fresh = fetch_dataset_file(ID_MAP_FILE, cache_dir=cache_dir, endpoint=endpoint, revision=revision)
        downloads += fresh
        files[ID_MAP_FILE] = str(path)
        fill_ids(needs_map, path)
    commits = {Path(f).parts[Path(f).parts.index("snapshots") + 1] for f in files.values() if "snapshots" in Path(f).parts}
    labels["_files"] = {"files": files, "downloaded_now": downloads, "commits": sorted(commits)}
    return labels


def mapillary_ids(labels: dict, attributes: list[str]) -> tuple[list[str], Counter]:
    """The distinct Mapillary image ids behind the labels, and the skipped rows counted by reason."""
    ids, skipped = {}, Counter()
    for attribute in attributes:
        for rows in labels[attribute].values():
            for row in rows:
                source = row["source"].lower()
                if source == "mapillary" and row["orig_id"].isdigit():
                    ids[row["orig_id"]] = None
                elif source == "kartaview":
                    skipped["KartaView image: not fetchable through the Mapillary client"] += 1
                elif not row["orig_id"]:
                    skipped["no source/orig_id for the uuid"] += 1
                else:
                    skipped[f"unusable source/id {row['source']!r}/{row['orig_id'][:20]!r}"] += 1
    return list(ids), skipped


def fetch_images(ids: list[str], store: Path, manifest_path: Path, options: dict, progress: bool) -> dict:
    """Make every id present in ``store`` through the Mapillary client; returns counts, failures by reason
    and the requests this call sent (0 for a store that already holds everything)."""
    from geo.mapillary.client import MapillaryClient
    from geo.mapillary.download import download_images, remove_partials
    from geo.mapillary.manifest import Manifest
    from geo.mapillary.options import MapillaryOptions, resolve_token

    settings = MapillaryOptions.from_mapping(options)
    token = resolve_token(settings.token_secret)
    store.mkdir(parents=True, exist_ok=True)
    remove_partials(store)
    manifest = Manifest(manifest_path)

    async def run():
        async with MapillaryClient(token, settings) as client:
            present, failures = await download_images(client, ({"image_id": i} for i in ids), store, manifest,
                                                      settings, total=len(ids), progress=progress, label="gss images")
            return present, failures, dict(client.requests)

    try:
        present, failures, requests = asyncio.run(run())
        fetched = manifest.fetched(ids)
    finally:
        manifest.close()
    reasons = Counter(reason[:160] for _, _, reason in failures)
    return {"present": present, "failed": len(failures), "failure_reasons": dict(reasons), "requests": requests,
            "failures": [{"image_id": image_id, "reason": reason} for image_id, _, reason in failures],
            "paths": {i: str(store / entry["path"]) for i, entry in fetched.items()}, "thumb_size": settings.thumb_size}


def write_dataset(labels: dict, attributes: list[str], root: Path, paths: dict[str, str]) -> dict:
    """``root/{train,test}/<attribute>.csv`` in the GSS layout (``img_path`` relative to ``root``) with the rows
    whose image is present; returns per attribute and split the rows kept, those whose Mapillary image could not
    be fetched (``image_missing``) and the KartaView or unidentified ones (``not_mapillary``)."""
    counts = {}
    for attribute in attributes:
        counts[attribute] = {}
        for split, rows in labels[attribute].items():
            kept = [r for r in rows if r["source"].lower() == "mapillary" and r["orig_id"] in paths]
            lines = ["img_path,uuid,source,orig_id," + attribute]
            for r in kept:
                relative = os.path.relpath(paths[r["orig_id"]], root)
                lines.append(",".join(_csv_cell(v) for v in (relative, r["uuid"], r["source"], r["orig_id"], r["label"])))
            (root / split).mkdir(parents=True, exist_ok=True)
            write_text_atomic(root / split / f"{attribute}.csv", "\n".join(lines) + "\n")
            mapillary = sum(r["source"].lower() == "mapillary" for r in rows)
            counts[attribute][split] = {"rows": len(rows), "kept": len(kept), "image_missing": mapillary - len(kept),
                                        "not_mapillary": len(rows) - mapillary}
    return counts


def _csv_cell(value: str) -> str:
    return f'"{value.replace(chr(34), chr(34) * 2)}"' if any(c in value for c in ',"\n') else value


def reset_stale_training(heads: Path, root: Path, attributes: list[str]) -> list[str]:
    """Delete the resumable training state of attributes whose training file changed since it was saved
    (e.g. images that failed before were fetched now): resuming would mix two datasets. Returns them."""
    reset = []
    for attribute in attributes:
        digest = hashlib.sha256((root / "train" / f"{attribute}.csv").read_bytes()).hexdigest()
        marker = heads / ".train" / f"{attribute}.data-sha256"
        if marker.is_file() and marker.read_text().strip() != digest:
            for stale in (heads / ".train").glob(f"{attribute}.*"):
                stale.unlink()
            reset.append(attribute)
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, digest)
    return reset


def cost_estimate(n_images: int, thumb_size, seconds_per_image: float | None = None) -> dict:
    """Disk (GB: thumbnails + ViT-B/16 feature cache) and, given a measured backbone time per image, GPU hours."""
    out = {"images": n_images, "thumbnails_gb": round(n_images * THUMB_MB.get(thumb_size, 0.13) / 1e3, 3),
           "feature_cache_gb_vit_b16": round(n_images * FEATURE_MB_VIT_B16 / 1e3, 3),
           "mapillary_requests": 2 * n_images}
    if seconds_per_image is not None:
        out["backbone_hours"] = round(n_images * seconds_per_image / 3600, 4)
    else:
        out["gpu_hours_estimate"] = round(n_images / ASSUMED_GPU_IMAGES_PER_S / 3600, 4)
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def run_gss(args: argparse.Namespace) -> dict:
    """The whole command; returns the report it also writes to ``<out>/gss-report.json``."""
    attributes = list(ATTRIBUTES) if args.attributes == ["all"] else list(dict.fromkeys(args.attributes))
    out = Path(args.out)
    endpoint = args.hf_endpoint or os.environ.get("HF_ENDPOINT") or None
    labels = fetch_labels(attributes, cache_dir=args.hf_cache, endpoint=endpoint, revision=args.revision,
                          limit=args.limit)
    ids, skipped = mapillary_ids(labels, attributes)
    report = {"attributes": attributes, "revision": args.revision, "labels": labels["_files"],
              "mapillary_images": len(ids), "skipped_rows": dict(skipped),
              "label_rows": {a: {s: len(r) for s, r in labels[a].items()} for a in attributes},
              "settings": {"model": args.model, "weights": args.weights, "mode": args.mode, "epochs": args.epochs,
                           "baseline_epochs": args.baseline_epochs, "seed": args.seed, "limit": args.limit,
                           "mapillary": dict(args.mapillary or {}), "drop_train_overlap": args.drop_train_overlap}}
    thumb = dict(args.mapillary or {}).get("thumb_size", 1024)
    thumb = int(thumb) if str(thumb).isdigit() else thumb
    report["cost_plan"] = cost_estimate(len(ids), thumb)
    report["cost_plan_per_attribute"] = {a: cost_estimate(len(mapillary_ids(labels, [a])[0]), thumb) for a in attributes}
    if args.plan:
        return report
    root = out / "dataset"
    images = fetch_images(ids, root / "img", out / "work" / "gss-manifest.sqlite", dict(args.mapillary or {}),
                          progress=not args.quiet)
    report["images"] = {k: v for k, v in images.items() if k != "paths"}
    report["dataset_rows"] = write_dataset(labels, attributes, root, images["paths"])
    report["training_restarted"] = reset_stale_training(out / "heads", root, attributes)
    from classify.baselines import BaselineConfig
    from classify.evaluate import paper_comparison_table
    from classify.jobs import gss_heads

    baselines = BaselineConfig(**({"epochs": args.baseline_epochs} if args.baseline_epochs else {}))
    job = gss_heads(attributes, root, out / "heads", out / "evaluation", model=args.model, weights=args.weights,
                    device=args.device, cache_dir=out / "work" / "features", mode=args.mode, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers,
                    baseline_config=baselines, drop_train_overlap=args.drop_train_overlap, progress=not args.quiet)
    per_image = job.encode_seconds / job.images_encoded if job.images_encoded else None
    report["backbone"] = {"model_id": job.backbone.model_id, "trained": job.backbone.trained,
                          "device": str(job.backbone.device), "images_encoded_now": job.images_encoded,
                          "seconds_per_image": per_image}
    report["cost_measured"] = {**cost_estimate(len(images["paths"]), images["thumb_size"], per_image),
                               "images_on_disk_gb": round(_folder_bytes(root / "img") / 1e9, 4),
                               "features_on_disk_gb": round(_folder_bytes(out / "work" / "features") / 1e9, 4)}
    report["table"] = paper_comparison_table(job.reports)
    report["evaluations"] = {a: r["report_path"] for a, r in job.reports.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "gss-comparison.md", report["table"] + "\n")
    write_text_atomic(out / "gss-report.json", json.dumps(report, indent=2, default=str))
    return report


def _print(report: dict, args) -> None:
    rows = ", ".join(f"{a} {c['train']}/{c['test']}" for a, c in report["label_rows"].items())
    commits = ", ".join(c[:12] for c in report["labels"]["commits"]) or "?"
    print(f"labels ({GSS_REPO}@{report['revision']}, commit {commits}): train/test rows {rows}; "
          f"{report['labels']['downloaded_now']} file(s) downloaded now")
    for reason, n in report["skipped_rows"].items():
        print(f"skipped {n} rows: {reason}")
    plan = report["cost_plan"]
    print(f"{report['mapillary_images']} distinct Mapillary images: about {plan['thumbnails_gb']} GB of thumbnails "
          f"and {plan['feature_cache_gb_vit_b16']} GB of ViT-B/16 features")
    if args.plan:
        print("| attribute | Mapillary images | Mapillary requests | thumbnails GB | ViT-B/16 features GB | "
              "GPU hours (estimate, cached mode) |\n|---|---|---|---|---|---|")
        for name, cost in report["cost_plan_per_attribute"].items():
            print(f"| {name} | {cost['images']} | {cost['mapillary_requests']} | {cost['thumbnails_gb']} | "
                  f"{cost['feature_cache_gb_vit_b16']} | {cost['gpu_hours_estimate']} |")
        print("(an image labelled for several attributes is fetched and encoded once: the total above is what it costs)")
        return
    images = report["images"]
    print(f"images: {images['present']} present, {images['failed']} failed {images['failure_reasons'] or ''}; "
          f"Mapillary requests now: {sum(images['requests'].values())}")
    missing = sum(c["image_missing"] for splits in report["dataset_rows"].values() for c in splits.values())
    if missing:
        print(f"{missing} label rows dropped: their image could not be fetched (a rerun tries again)")
    backbone = report["backbone"]
    if not backbone["trained"]:
        from contracts.notices import untrained_warning

        print(f"WARNING: {untrained_warning(args.model, 'these heads and numbers are')}")
    print(f"backbone passes now: {backbone['images_encoded_now']} images"
          + (f", {backbone['seconds_per_image'] * 1e3:.1f} ms each on {backbone['device']}"
             if backbone["seconds_per_image"] else " (all features from the cache)"))
    print(f"test accuracy ({args.mode} mode, model {args.model}), the paper's beside ours:")
    print(report["table"])
    print(f"report: {Path(args.out) / 'gss-report.json'}; per-attribute evaluations beside it")


def _handler(args: argparse.Namespace) -> int:
    _print(run_gss(args), args)
    return 0


def add_gss_command(commands) -> argparse.ArgumentParser:
    """Add ``city-audit gss`` to the ``city-audit`` subparsers."""
    from flows.cli import _add_model_options, _key_value

    gss = commands.add_parser("gss", help="reproduce the paper's heads: Global StreetScapes labels + Mapillary images "
                              "-> 8 trained MHAdapter heads and the paper's table beside ours (needs "
                              "MAPILLARY_ACCESS_TOKEN)")
    gss.add_argument("--attributes", nargs="+", default=["all"], choices=list(ATTRIBUTES) + ["all"],
                     metavar="ATTRIBUTE", help=f"all (default) or some of {', '.join(ATTRIBUTES)}")
    gss.add_argument("--out", default="outputs/gss", help="dataset/ (labels + images), heads/, evaluation/, work/")
    gss.add_argument("--revision", default="main", help="dataset revision (a commit hash pins the labels)")
    gss.add_argument("--hf-endpoint", help="Hugging Face endpoint (default $HF_ENDPOINT or the Hub)")
    gss.add_argument("--hf-cache", help="huggingface_hub cache folder (default its own, ~/.cache/huggingface/hub)")
    gss.add_argument("--plan", action="store_true", help="fetch only the labels; print image counts and cost")
    gss.add_argument("--limit", type=int, help="at most this many label rows per attribute and split (a trial run)")
    gss.add_argument("-m", "--mapillary", action="append", type=_key_value, metavar="KEY=VALUE",
                     help="Mapillary client options, e.g. thumb_size=1024 concurrency=16 (docs/mapillary.md)")
    _add_model_options(gss)
    gss.add_argument("--mode", choices=["cached", "augment"], default="cached",
                     help="cached (default): one backbone pass per image; augment: the reference's augmentation")
    gss.add_argument("--epochs", type=int, help="MHAdapter epochs (default 100)")
    gss.add_argument("--baseline-epochs", type=int, help="CLIP-Adapter / CoOp epochs (default 100)")
    gss.add_argument("--batch-size", type=int)
    gss.add_argument("--seed", type=int)
    gss.add_argument("--num-workers", type=int)
    gss.add_argument("--drop-train-overlap", action="store_true", help="score only test images the heads did not "
                     "train on (default: refuse a test split that shares images with the training split)")
    gss.add_argument("--quiet", action="store_true", help="no progress bars")
    gss.set_defaults(handler=_handler)
    return gss
