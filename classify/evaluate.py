"""Evaluate heads for one attribute on one labelled split, and compare methods on it.

``evaluate_attribute`` scores, on the **same** images: ZeroR (majority class; always, see
``classify.baselines.zero_r_reference``), zero-shot CLIP, the trained baselines of methods §2.8
fitted on the same training labels and cached features (linear probe, CLIP-Adapter, CoOp), and the
MHAdapter head from ``--heads DIR`` when it has one for the attribute. It writes
``<attribute>-evaluation.json`` (all metrics of ``classify.metrics`` per method, plus the comparison
table) and one confusion-matrix PNG per method into the output folder. ``paper_comparison_table``
puts the paper's accuracies beside ours for several attributes (``city-audit gss``).

Splits: ``test`` is ``<root>/test/<attribute>.csv`` of a Global StreetScapes folder, or the
given ``path,label`` CSV itself; ``val`` is the held-out part of the training labels, recreated
from the seed and fraction recorded in the MHAdapter checkpoint (so it is the split the head
was selected on, never trained on).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from classify.backbone import Backbone, BackboneError, ImageFeatures
from classify.baselines import (BaselineConfig, LinearProbeHead, fit_clip_adapter, fit_linear_probe,
                                zero_r_reference)
from classify.checkpoints import backbone_identity, head_paths, load_head, read_sidecar
from classify.features import FeatureCache, encode_files
from classify.heads import zero_shot_heads
from classify.labels import LabeledImages, LabelFileError, deduplicate, file_digest, read_labels
from classify.metrics import classification_metrics
from classify.schema import get_attribute
from classify.train import TrainConfig, TrainingError, predict_logits, split_labels

TABLE_COLUMNS = ("accuracy", "macro_f1", "macro_f1_all_classes", "weighted_f1", "adjusted_balanced_accuracy")
#: Seed and held-out fraction for choosing the linear probe's C (``classify.baselines.fit_linear_probe``).
PROBE_CONFIG = TrainConfig(mode="cached", lr=1e-3, class_weighting="inverse")


def render_confusion_matrix(matrix, classes, title: str, path: str | Path, cell: int = 72) -> Path:
    """Draw a confusion matrix (rows true, columns predicted) as a PNG with counts and row shares."""
    matrix = [[int(v) for v in row] for row in matrix]
    font = ImageFont.load_default()
    label_w = max(90, 7 * max(len(c) for c in classes) + 16)
    n = len(classes)
    width, height = label_w + n * cell + 20, 40 + label_w + n * cell + 10
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=font)
    top = 40 + label_w
    for j, name in enumerate(classes):  # predicted classes: vertical labels above the grid
        tile = Image.new("RGB", (label_w, 14), "white")
        ImageDraw.Draw(tile).text((2, 1), name, fill="black", font=font)
        image.paste(tile.rotate(90, expand=True), (label_w + j * cell + cell // 2 - 7, 40))
    for i, name in enumerate(classes):
        draw.text((6, top + i * cell + cell // 2 - 6), name, fill="black", font=font)
        total = sum(matrix[i]) or 1
        for j in range(n):
            share = matrix[i][j] / total
            shade = int(255 - 150 * share)
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(shade, shade, 255), outline="gray")
            draw.text((x0 + 6, y0 + cell // 2 - 12), f"{matrix[i][j]}", fill="black", font=font)
            draw.text((x0 + 6, y0 + cell // 2 + 2), f"{share:.0%}", fill="black", font=font)
    draw.text((label_w, height - 12), "columns: predicted, rows: true", fill="gray", font=font)
    path = Path(path)
    image.save(path)
    return path


def score_head(head, features: ImageFeatures, labels: LabeledImages, device: torch.device,
               batch_size: int = 256) -> dict:
    """All metrics of ``head`` on precomputed ``features`` of the labelled images."""
    logits = predict_logits(head, features, batch_size, device)
    return classification_metrics(list(labels.labels), logits.argmax(-1).tolist(), labels.attribute.classes)


def comparison_table(methods: dict[str, dict]) -> str:
    """A Markdown table: one row per method, the headline metrics as columns."""
    lines = ["| method | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for method, metrics in methods.items():
        cells = ["n/a" if metrics.get(c) is None else f"{metrics[c]:.4f}" for c in TABLE_COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class EvaluationError(TrainingError):
    """An evaluation that would mislead: test images the compared heads were trained on."""


def _labels(source: Path, attribute, split: str, notes: dict, what: str) -> LabeledImages:
    """Labels of one split with repeated images (same bytes) removed; the count goes to ``notes``."""
    labeled, dropped = deduplicate(read_labels(source, attribute, split))
    if dropped:
        notes[f"duplicates_{what}"] = f"{dropped} duplicate rows (same image bytes) dropped from {labeled.source}"
    return labeled


def _eval_and_train_sets(attribute, data: Path, split: str, train_data: Path | None,
                         config: TrainConfig, notes: dict) -> tuple[LabeledImages, LabeledImages | None]:
    """(images to evaluate on, training images for the probe) without overlap."""
    source = train_data or (data if data.is_dir() or split == "val" else None)
    training = split_labels(_labels(source, attribute, "train", notes, "train"), config) if source is not None else None
    if split == "val":
        return training[1], training[0]
    if split != "test":
        raise ValueError(f"unknown split {split!r}; choose test or val")
    return _labels(data, attribute, "test", notes, "test"), (training[0] if training else None)


def head_training_images(sidecar: dict, attribute) -> LabeledImages:
    """The images a checkpoint's head was fitted on, recreated from the data, seed and fraction it
    records (the same deduplicated, seeded split as ``train_attribute``)."""
    hp = sidecar.get("hyperparameters", {})
    config = replace(TrainConfig(), seed=hp.get("seed", 42), val_fraction=hp.get("val_fraction", 0.2))
    labeled, _ = deduplicate(read_labels(Path(hp["data"]), attribute, "train"))
    return split_labels(labeled, config)[0]


def _training_overlap(eval_set: LabeledImages, training: dict[str, LabeledImages]) -> dict[str, list[int]]:
    """Positions of ``eval_set`` whose image bytes some training set also holds, per training set."""
    digests = [file_digest(f) for f in eval_set.files]
    found = {}
    for name, part in training.items():
        seen = {file_digest(f) for f in part.files}
        positions = [i for i, d in enumerate(digests) if d in seen]
        if positions:
            found[name] = positions
    return found


def fit_probe(attr, train_set: LabeledImages, encode, config: TrainConfig) -> tuple[LinearProbeHead, str]:
    """Logistic-regression probe on exactly ``train_set`` (the head's training labels): C picked on a
    seeded stratified held-out part of it, then refitted on all of it. Deterministic."""
    fit_part, select_part = split_labels(train_set, config)
    _, selection = fit_linear_probe(attr, encode(fit_part), list(fit_part.labels), encode(select_part),
                                    list(select_part.labels))
    c = selection["chosen_C"]
    probe, info = fit_linear_probe(attr, encode(train_set), list(train_set.labels), c_grid=(c,))
    fit = info["fits"][0]
    return probe, (f"logistic regression (L-BFGS, C={c:g} chosen on {len(select_part)} held-out training images), "
                   f"fitted on all {len(train_set)} training images the head used; "
                   f"{'converged' if info['converged'] else 'NOT converged'} (max |gradient| "
                   f"{fit['max_abs_gradient']:.1e}, {fit['iterations']} iterations)")


#: trained baselines of methods §2.8 beside the linear probe, in table order
TRAINED_BASELINES = ("clip_adapter", "coop")


def fit_trained_baselines(attr, train_set: LabeledImages, encode, backbone: Backbone, zeroshot, split_config: TrainConfig,
                          config: BaselineConfig, names: tuple[str, ...], notes: dict) -> dict:
    """CLIP-Adapter and CoOp fitted on exactly ``train_set`` (the head's training labels and cached features):
    trained on a seeded stratified part of it, the epoch chosen on the held-out rest. Seeded, so
    reproducible. A backbone whose text tower CoOp cannot drive gets a note instead of a row."""
    from classify.prompt_learning import fit_coop

    fit_part, select_part = split_labels(train_set, split_config)
    fit_x = ImageFeatures(encode(fit_part).pooled, None)  # both train on the pooled embedding only: drop the tokens
    select_x = ImageFeatures(encode(select_part).pooled, None)
    heads = {}
    for name in names:
        try:
            if name == "clip_adapter":
                head, info = fit_clip_adapter(attr, zeroshot.text_embeddings, backbone.logit_scale, fit_x,
                                              list(fit_part.labels), select_x, list(select_part.labels), config,
                                              backbone.device)
            elif name == "coop":
                head, info = fit_coop(backbone, attr, fit_x, list(fit_part.labels), select_x, list(select_part.labels),
                                      config)
            else:
                raise ValueError(f"unknown baseline {name!r}; choose from {TRAINED_BASELINES}")
        except BackboneError as exc:
            notes[name] = f"skipped: {exc}"
            continue
        heads[name] = head
        notes[name] = (f"{info['optimizer']} (seed {config.seed}) on {len(fit_part)} of the training images, "
                       f"best epoch {info['best_epoch']} of {info['epochs_run']} chosen on the other "
                       f"{len(select_part)} (val macro-F1 {info['val_macro_f1']:.4f})")
    return heads


def evaluate_attribute(attribute: str, data: str | Path, backbone: Backbone, out_dir: str | Path, *,
                       heads_dir: str | Path | None = None, split: str = "test",
                       train_data: str | Path | None = None, cache_dir: str | Path | None = None,
                       probe_config: TrainConfig = PROBE_CONFIG, progress: bool = True,
                       drop_train_overlap: bool = False, baseline_config: BaselineConfig = BaselineConfig(),
                       baselines: tuple[str, ...] = TRAINED_BASELINES) -> dict:
    """Compare ZeroR, zero-shot, linear probe, CLIP-Adapter, CoOp and MHAdapter for ``attribute`` on one split.

    Returns the report (also written as ``<out_dir>/<attribute>-evaluation.json``): per-method
    metrics, confusion PNG paths and a Markdown ``table``; per-image predictions of every method
    go to ``<attribute>-predictions.csv``. The probe is skipped (and said so) when there are no
    training labels, e.g. a plain test CSV without ``train_data``, and so are CLIP-Adapter and CoOp
    (``baselines`` names them, ``baseline_config`` is their optimiser); ZeroR is then the oracle majority
    of the evaluation labels unless the checkpoint records training counts. Repeated images are dropped
    with a count in ``notes``. Evaluation images that the head (or the probe) trained on raise
    ``EvaluationError`` unless ``drop_train_overlap``, which removes them and says how many.
    """
    attr = get_attribute(attribute)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sidecar_path = head_paths(heads_dir, attr.name)[1] if heads_dir is not None else None
    has_head = sidecar_path is not None and sidecar_path.is_file()
    split_config = TrainConfig()
    notes: dict[str, str] = {}
    sidecar = read_sidecar(sidecar_path) if has_head else None
    if has_head:  # recreate the training split the head was selected on
        hp = sidecar["hyperparameters"]
        split_config = replace(split_config, seed=hp.get("seed", 42), val_fraction=hp.get("val_fraction", 0.2))
    eval_set, train_set = _eval_and_train_sets(attr, Path(data), split, Path(train_data) if train_data else None,
                                               split_config, notes)
    training = {"linear probe / ZeroR": train_set} if train_set is not None else {}
    if has_head:
        try:
            training["mhadapter head"] = head_training_images(sidecar, attr)
        except (KeyError, OSError, LabelFileError, TrainingError) as exc:
            notes["train_overlap"] = f"could not recreate the head's training images to check overlap: {exc}"
    overlap = _training_overlap(eval_set, training)
    if overlap:
        positions = sorted({i for found in overlap.values() for i in found})
        what = "; ".join(f"{len(found)} in the {name}'s training images" for name, found in overlap.items())
        if not drop_train_overlap:
            raise EvaluationError(f"{len(positions)} of the {len(eval_set)} {split} images were trained on ({what}, "
                                  f"e.g. {eval_set.files[positions[0]]!r}); evaluate on held-out images, or pass "
                                  f"--drop-train-overlap to score only the others")
        eval_set = eval_set.subset([i for i in range(len(eval_set)) if i not in set(positions)])
        notes["train_overlap"] = f"{len(positions)} images the heads trained on were dropped ({what})"
        if not len(eval_set):
            raise EvaluationError(f"every {split} image was trained on ({what}): nothing left to evaluate")
    cache = FeatureCache(cache_dir, backbone) if cache_dir is not None else None

    def encode(part: LabeledImages) -> ImageFeatures:
        return encode_files(list(part.files), list(part.image_ids), backbone, cache=cache, progress=progress)

    features = encode(eval_set)
    heads: dict[str, object] = {}
    zero_r_name, heads[zero_r_name], notes["zero_r"] = zero_r_reference(
        attr, train_set.class_counts() if train_set is not None else None, sidecar, eval_set.class_counts())
    heads["zeroshot"] = zero_shot_heads(backbone, [attr])[attr.name]
    if train_set is not None:
        heads["linear_probe"], notes["linear_probe"] = fit_probe(attr, train_set, encode, probe_config)
        heads.update(fit_trained_baselines(attr, train_set, encode, backbone, heads["zeroshot"], probe_config,
                                           baseline_config, baselines, notes))
    else:
        for name in ("linear_probe", *baselines):
            notes[name] = "skipped: no training labels (pass --train-data)"
    if has_head:
        heads["mhadapter"] = load_head(sidecar_path, backbone)
    elif heads_dir is not None:
        notes["mhadapter"] = f"skipped: no {attr.name} checkpoint in {heads_dir}"

    methods, pictures, predicted = {}, {}, {}
    for method, head in heads.items():
        predicted[method] = predict_logits(head, features, 256, backbone.device).argmax(-1).tolist()
        methods[method] = classification_metrics(list(eval_set.labels), predicted[method], attr.classes)
        methods[method]["head_id"] = head.head_id
        pictures[method] = str(render_confusion_matrix(
            methods[method]["confusion_matrix"], attr.classes, f"{attr.name} - {method} - {split} (n={len(eval_set)})",
            out_dir / f"{attr.name}-{method}-confusion.png"))
    predictions_path = write_predictions(out_dir / f"{attr.name}-predictions.csv", eval_set, predicted)
    report = {
        "attribute": attr.name, "split": split, "data": str(data), "n": len(eval_set),
        "class_counts": dict(zip(attr.classes, eval_set.class_counts())),
        "backbone": backbone_identity(backbone),
        "methods": methods, "confusion_pngs": pictures, "notes": notes, "table": comparison_table(methods),
        "predictions_csv": str(predictions_path),
    }
    path = out_dir / f"{attr.name}-evaluation.json"
    path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(path)
    return report


def write_predictions(path: Path, eval_set: LabeledImages, predicted: dict[str, list[int]]) -> Path:
    """One row per evaluated image: id, file, true label and every method's predicted label."""
    classes = eval_set.attribute.classes
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "file", "label", *predicted])
        for i, (image_id, file, label) in enumerate(zip(eval_set.image_ids, eval_set.files, eval_set.labels)):
            writer.writerow([image_id, file, classes[label], *(classes[p[i]] for p in predicted.values())])
    return path


#: CLIP-MHAdapter test accuracy reported by its paper on Global StreetScapes (docs/mhadapter.md; weather and
#: glare were cut off in the excerpt we could read) and MaxViT's from the dataset paper (one model per attribute)
PAPER_MHADAPTER_ACCURACY = {"lighting_condition": 0.9646, "platform": 0.6912, "view_direction": 0.9528,
                            "pano_status": 0.9940, "reflection": 0.7669, "quality": 0.8908}
PAPER_MAXVIT_ACCURACY = {"pano_status": 0.999, "lighting_condition": 0.962, "glare": 0.941, "view_direction": 0.874,
                         "quality": 0.799, "reflection": 0.787, "weather": 0.755, "platform": 0.683}
#: our methods in the paper-comparison table, in column order
GSS_COLUMNS = ("mhadapter", "zero_r", "zeroshot", "linear_probe", "clip_adapter", "coop")


def paper_comparison_table(reports: dict[str, dict]) -> str:
    """Markdown: per attribute the paper's accuracies (CLIP-MHAdapter, MaxViT) beside ours on the test split
    (our MHAdapter head, ZeroR, zero-shot and the trained baselines), plus our MHAdapter macro-F1 and n."""
    header = ["attribute", "n test", "paper MHAdapter", "paper MaxViT", *(f"ours {c}" for c in GSS_COLUMNS),
              "ours mhadapter macro-F1"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]

    def cell(value):
        return "n/a" if value is None else f"{value:.4f}"

    for name, report in reports.items():
        methods = report["methods"]
        zero_r = next((v for k, v in methods.items() if k.startswith("zero_r")), {})
        ours = [cell((zero_r if c == "zero_r" else methods.get(c, {})).get("accuracy")) for c in GSS_COLUMNS]
        lines.append(f"| {name} | {report['n']} | {cell(PAPER_MHADAPTER_ACCURACY.get(name))} | "
                     f"{cell(PAPER_MAXVIT_ACCURACY.get(name))} | " + " | ".join(ours) +
                     f" | {cell(methods.get('mhadapter', {}).get('macro_f1'))} |")
    return "\n".join(lines)
