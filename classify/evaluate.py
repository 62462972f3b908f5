"""Evaluate heads for one attribute on one labelled split, and compare methods on it.

``evaluate_attribute`` scores, on the **same** images: ZeroR (majority class), zero-shot CLIP,
a linear probe trained on the same training split, and the MHAdapter head from ``--heads DIR``
when it has one for the attribute. It writes ``<attribute>-evaluation.json`` (all metrics of
``classify.metrics`` per method, plus the comparison table) and one confusion-matrix PNG per
method into the output folder.

Splits: ``test`` is ``<root>/test/<attribute>.csv`` of a Global StreetScapes folder, or the
given ``path,label`` CSV itself; ``val`` is the held-out part of the training labels, recreated
from the seed and fraction recorded in the MHAdapter checkpoint (so it is the split the head
was selected on, never trained on).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from classify.backbone import Backbone, ImageFeatures
from classify.baselines import LinearProbeHead, ZeroRHead
from classify.checkpoints import head_paths, load_head, read_sidecar
from classify.features import FeatureCache, encode_files
from classify.heads import zero_shot_heads
from classify.labels import LabeledImages, read_labels
from classify.metrics import classification_metrics
from classify.schema import get_attribute
from classify.train import TrainConfig, cached_batches, fit, predict_logits, split_labels

TABLE_COLUMNS = ("accuracy", "macro_f1", "macro_f1_all_classes", "weighted_f1", "adjusted_balanced_accuracy")
#: The linear probe is trained like the heads, on cached features (the reference used SGD lr 2e-3).
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


def _eval_and_train_sets(attribute, data: Path, split: str, train_data: Path | None,
                         config: TrainConfig) -> tuple[LabeledImages, LabeledImages | None]:
    """(images to evaluate on, training images for the probe) without overlap."""
    source = train_data or (data if data.is_dir() or split == "val" else None)
    training = split_labels(read_labels(source, attribute, "train"), config) if source is not None else None
    if split == "val":
        return training[1], training[0]
    if split != "test":
        raise ValueError(f"unknown split {split!r}; choose test or val")
    return read_labels(data, attribute, "test"), (training[0] if training else None)


def evaluate_attribute(attribute: str, data: str | Path, backbone: Backbone, out_dir: str | Path, *,
                       heads_dir: str | Path | None = None, split: str = "test",
                       train_data: str | Path | None = None, cache_dir: str | Path | None = None,
                       probe_config: TrainConfig = PROBE_CONFIG, progress: bool = True) -> dict:
    """Compare ZeroR, zero-shot, linear probe and MHAdapter for ``attribute`` on one split.

    Returns the report (also written as ``<out_dir>/<attribute>-evaluation.json``): per-method
    metrics, confusion PNG paths and a Markdown ``table``. The probe is skipped (and said so)
    when there are no training labels, e.g. a plain test CSV without ``train_data``.
    """
    attr = get_attribute(attribute)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sidecar_path = head_paths(heads_dir, attr.name)[1] if heads_dir is not None else None
    has_head = sidecar_path is not None and sidecar_path.is_file()
    split_config = TrainConfig()
    if has_head:  # recreate the training split the head was selected on
        hp = read_sidecar(sidecar_path)["hyperparameters"]
        split_config = replace(split_config, seed=hp.get("seed", 42), val_fraction=hp.get("val_fraction", 0.2))
    eval_set, train_set = _eval_and_train_sets(attr, Path(data), split, Path(train_data) if train_data else None,
                                               split_config)
    cache = FeatureCache(cache_dir, backbone) if cache_dir is not None else None

    def encode(part: LabeledImages) -> ImageFeatures:
        return encode_files(list(part.files), list(part.image_ids), backbone, cache=cache, progress=progress)

    features = encode(eval_set)
    heads: dict[str, object] = {}
    notes: dict[str, str] = {}
    if train_set is not None:
        heads["zero_r"] = ZeroRHead(attr, train_set.class_counts())
    heads["zeroshot"] = zero_shot_heads(backbone, [attr])[attr.name]
    if train_set is not None:
        probe_train, probe_val = split_labels(train_set, probe_config)
        probe = LinearProbeHead(attr, backbone.embed_dim).to(backbone.device)
        probe_fit = fit(probe, cached_batches(encode(probe_train), torch.tensor(probe_train.labels),
                                              probe_config.batch_size, probe_config.seed, backbone.device),
                        encode(probe_val), torch.tensor(probe_val.labels), probe_train.class_counts(), probe_config,
                        backbone.device, progress=progress, desc="training linear probe")
        heads["linear_probe"] = probe
        notes["linear_probe"] = f"trained on {len(probe_train)} images, selected at epoch {probe_fit.best_epoch}"
    else:
        notes["linear_probe"] = "skipped: no training labels (pass --train-data)"
    if has_head:
        heads["mhadapter"] = load_head(sidecar_path, backbone)
    elif heads_dir is not None:
        notes["mhadapter"] = f"skipped: no {attr.name} checkpoint in {heads_dir}"

    methods, pictures = {}, {}
    for method, head in heads.items():
        methods[method] = score_head(head, features, eval_set, backbone.device)
        methods[method]["head_id"] = head.head_id
        pictures[method] = str(render_confusion_matrix(
            methods[method]["confusion_matrix"], attr.classes, f"{attr.name} - {method} - {split} (n={len(eval_set)})",
            out_dir / f"{attr.name}-{method}-confusion.png"))
    report = {
        "attribute": attr.name, "split": split, "data": str(data), "n": len(eval_set),
        "class_counts": dict(zip(attr.classes, eval_set.class_counts())),
        "backbone": {"model_id": backbone.model_id, "trained": backbone.trained},
        "methods": methods, "confusion_pngs": pictures, "notes": notes, "table": comparison_table(methods),
    }
    path = out_dir / f"{attr.name}-evaluation.json"
    path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(path)
    return report
