"""Zero-shot vs adapted on a labelled set: one table per attribute, the MHAdapter evaluator's metrics.

``compare_adapted`` classifies the labelled images once through ``classify.predict`` with two
heads side by side (zero-shot and the adapted checkpoint from ``adapted_dir``), scores both with
``classify.metrics.classification_metrics``, draws the confusion matrices with the evaluator's
``render_confusion_matrix`` and writes ``<out>/<attribute>-adaptation.json``. ``adaptation_table``
joins several attributes into one Markdown table.

Beside zero-shot, every report has the **un-adapted method head** (the same method and settings,
built fresh from the backbone, before any self-training) and ZeroR: the majority class of the
training labels where they exist, else of the evaluation labels, shown as ``zero_r (oracle)``
because it peeks at them (an upper bound of ZeroR; ``classify.baselines.zero_r_reference``).
Gains are reported against both zero-shot and the un-adapted head, with the share of predictions
that adaptation changed; a checkpoint whose last epoch put most pseudo-labels on one class gets a
collapse warning. Splits: ``test``, ``train`` and ``val`` (the seeded held-out part of the
training labels, as ``city-audit evaluate --split val``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from classify.adapt import get_method
from classify.adapted_visual import AdaptationError
from classify.backbone import Backbone
from classify.baselines import zero_r_reference
from classify.checkpoints import head_paths, load_head, read_sidecar
from classify.evaluate import TABLE_COLUMNS, comparison_table, render_confusion_matrix
from classify.heads import zero_shot_heads
from classify.labels import deduplicate, read_labels
from classify.metrics import classification_metrics
from classify.predict import predict_attributes
from classify.schema import get_attribute
from classify.train import TrainConfig, split_labels


def compare_adapted(attribute: str, data: str | Path, backbone: Backbone, adapted_dir: str | Path,
                    out_dir: str | Path, *, split: str = "test", batch_size: int = 32, progress: bool = True) -> dict:
    """Metrics of zero-shot and of the adapted head of ``attribute`` on the labelled ``split`` of ``data``.

    ``data``: a Global StreetScapes folder or a ``path,label`` CSV. Returns the report dict (also
    written as JSON), with ``methods`` {zeroshot, <method>}, ``table`` and ``confusion_pngs``.
    """
    attr = get_attribute(attribute)
    sidecar = head_paths(adapted_dir, attr.name)[1]
    if not sidecar.is_file():
        raise AdaptationError(f"no adapted {attr.name} checkpoint in {adapted_dir}")
    adapted = load_head(sidecar, backbone)
    labels, train_labels = _split_labels(data, attr, split)
    frame = pd.DataFrame({"image_id": [f"{i}" for i in range(len(labels))], "file": list(labels.files)})
    method = get_method(adapted.method)
    unadapted = method.build(backbone, attr, adapted.config).eval()
    heads = {"zeroshot": zero_shot_heads(backbone, [attr])[attr.name], f"{adapted.method} (un-adapted)": unadapted,
             adapted.method: adapted}
    zero_r_name, zero_r, zero_r_note = zero_r_reference(
        attr, train_labels.class_counts() if train_labels is not None else None, eval_counts=labels.class_counts())
    heads = {zero_r_name: zero_r, **heads}
    result = predict_attributes(frame, backbone, heads, batch_size=batch_size, progress=progress)
    if not result.failures.empty:
        first = result.failures.iloc[0]
        raise AdaptationError(f"cannot decode evaluation image {labels.files[int(first.image_id)]!r}: {first.reason}")
    table = result.predictions.to_pandas()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored, pictures, predictions = {}, {}, {}
    for name, head in heads.items():
        rows = table[table.attribute == name].set_index("image_id").loc[frame.image_id]
        predicted = predictions[name] = [attr.classes.index(label) for label in rows.label]
        scored[name] = {**classification_metrics(list(labels.labels), predicted, attr.classes), "head_id": head.head_id}
        pictures[name] = str(render_confusion_matrix(scored[name]["confusion_matrix"], attr.classes,
                                                     f"{attr.name} - {name} - {split} (n={len(labels)})",
                                                     out_dir / f"{attr.name}-{name}-adaptation-confusion.png"))
    unadapted_name = f"{adapted.method} (un-adapted)"
    methods = {name: scored[name] for name in ("zeroshot", adapted.method)}
    references = {name: scored[name] for name in (zero_r_name, unadapted_name)}
    report = {"attribute": attr.name, "split": split, "data": str(data), "n": len(labels),
              "class_counts": dict(zip(attr.classes, labels.class_counts())),
              "adapted_method": get_method(adapted.method).display_name,
              "backbone": {"model_id": backbone.model_id, "trained": backbone.trained},
              "methods": methods, "references": references, "confusion_pngs": pictures,
              "table": comparison_table({**references, **methods}),
              "zero_r_source": zero_r_note,
              "changed_by_adaptation": _share_changed(predictions[unadapted_name], predictions[adapted.method]),
              "warnings": pseudo_label_warnings(read_sidecar(sidecar))}
    path = out_dir / f"{attr.name}-adaptation.json"
    path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(path)
    return report


def _split_labels(data, attr, split: str):
    """(labels to score, training labels for ZeroR or None) of ``split``; duplicate images dropped."""
    if split == "val":
        train, val = split_labels(deduplicate(read_labels(data, attr, "train"))[0], TrainConfig())
        return val, train
    labels = deduplicate(read_labels(data, attr, split))[0]
    train = None
    if split == "test" and Path(data).is_dir():
        train = deduplicate(read_labels(data, attr, "train"))[0]
    return labels, train


def _share_changed(before: list[int], after: list[int]) -> dict:
    """How many predictions adaptation changed, and their share."""
    changed = sum(a != b for a, b in zip(before, after))
    return {"n": changed, "share": changed / max(1, len(after))}


#: a checkpoint whose last epoch put at least this share of the pseudo-labels on one class is flagged
COLLAPSE_SHARE = 0.9


def pseudo_label_warnings(sidecar: dict) -> list[str]:
    """Collapse warnings from the self-training history recorded in an adapted checkpoint."""
    history = (sidecar.get("metrics") or {}).get("history") or []
    counts = (history[-1] if history else {}).get("pseudo_label_counts") or {}
    total = sum(counts.values())
    if not total:
        return []
    top, n = max(counts.items(), key=lambda item: item[1])
    if n / total >= COLLAPSE_SHARE and len(counts) > 1:
        return [f"pseudo-labels collapsed: {n / total:.0%} of the last epoch's pseudo-labels are '{top}'; the "
                f"adapted head has likely learned one class, not the attribute"]
    return []


def adaptation_table(reports: list[dict]) -> str:
    """One Markdown table over attributes: per attribute a ZeroR row (``zero_r (oracle)`` when only the
    evaluation labels gave its majority class), a zero-shot row, an adapted row, and the adapted − zero-shot gain."""
    lines = ["| attribute | method | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 2) + "|"]
    for report in reports:
        zero_r = {k: v for k, v in report.get("references", {}).items() if k.startswith("zero_r")}
        for name, metrics in {**zero_r, **report["methods"]}.items():
            cells = ["n/a" if metrics.get(c) is None else f"{metrics[c]:.4f}" for c in TABLE_COLUMNS]
            lines.append(f"| {report['attribute']} | {name} | " + " | ".join(cells) + " |")
        zs, ad = (report["methods"][k] for k in report["methods"])
        gains = ["n/a" if zs.get(c) is None or ad.get(c) is None else f"{ad[c] - zs[c]:+.4f}" for c in TABLE_COLUMNS]
        lines.append(f"| {report['attribute']} | gain | " + " | ".join(gains) + " |")
    return "\n".join(lines)


def adaptation_details(reports: list[dict]) -> str:
    """The honest companion of ``adaptation_table``: per attribute, ZeroR and the un-adapted method
    head beside the adapted one, the gain against the un-adapted head, the share of predictions
    adaptation changed, and any pseudo-label collapse warning."""
    lines = ["| attribute | ZeroR acc | un-adapted acc | adapted acc | gain vs un-adapted (acc / macro-F1) "
             "| predictions changed | warning |", "|---" * 7 + "|"]
    for report in reports:
        refs, adapted = report["references"], list(report["methods"].values())[-1]
        unadapted = next(v for k, v in refs.items() if k.endswith("(un-adapted)"))
        zero_r = next((f"{v['accuracy']:.4f}" + (" (oracle: majority of the evaluation labels)" if "oracle" in k else "")
                       for k, v in refs.items() if k.startswith("zero_r")), "n/a")
        changed = report["changed_by_adaptation"]
        lines.append(f"| {report['attribute']} | {zero_r} | {unadapted['accuracy']:.4f} | {adapted['accuracy']:.4f} | "
                     f"{adapted['accuracy'] - unadapted['accuracy']:+.4f} / "
                     f"{adapted['macro_f1'] - unadapted['macro_f1']:+.4f} | {changed['n']} of {report['n']} "
                     f"({changed['share']:.1%}) | {'; '.join(report['warnings']) or '-'} |")
    return "\n".join(lines)
