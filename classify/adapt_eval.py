"""Zero-shot vs adapted on a labelled set: one table per attribute, the MHAdapter evaluator's metrics.

``compare_adapted`` classifies the labelled images once through ``classify.predict`` with two
heads side by side (zero-shot and the adapted checkpoint from ``adapted_dir``), scores both with
``classify.metrics.classification_metrics``, draws the confusion matrices with the evaluator's
``render_confusion_matrix`` and writes ``<out>/<attribute>-adaptation.json``. ``adaptation_table``
joins several attributes into one Markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from classify.adapt import get_method
from classify.adapted_visual import AdaptationError
from classify.backbone import Backbone
from classify.checkpoints import head_paths, load_head
from classify.evaluate import TABLE_COLUMNS, comparison_table, render_confusion_matrix
from classify.heads import zero_shot_heads
from classify.labels import read_labels
from classify.metrics import classification_metrics
from classify.predict import predict_attributes
from classify.schema import get_attribute


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
    labels = read_labels(data, attr, split)
    frame = pd.DataFrame({"image_id": [f"{i}" for i in range(len(labels))], "file": list(labels.files)})
    heads = {"zeroshot": zero_shot_heads(backbone, [attr])[attr.name], adapted.method: adapted}
    result = predict_attributes(frame, backbone, heads, batch_size=batch_size, progress=progress)
    if not result.failures.empty:
        first = result.failures.iloc[0]
        raise AdaptationError(f"cannot decode evaluation image {labels.files[int(first.image_id)]!r}: {first.reason}")
    table = result.predictions.to_pandas()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods, pictures = {}, {}
    for name, head in heads.items():
        rows = table[table.attribute == name].set_index("image_id").loc[frame.image_id]
        predicted = [attr.classes.index(label) for label in rows.label]
        methods[name] = {**classification_metrics(list(labels.labels), predicted, attr.classes), "head_id": head.head_id}
        pictures[name] = str(render_confusion_matrix(methods[name]["confusion_matrix"], attr.classes,
                                                     f"{attr.name} - {name} - {split} (n={len(labels)})",
                                                     out_dir / f"{attr.name}-{name}-adaptation-confusion.png"))
    report = {"attribute": attr.name, "split": split, "data": str(data), "n": len(labels),
              "class_counts": dict(zip(attr.classes, labels.class_counts())),
              "adapted_method": get_method(adapted.method).display_name,
              "backbone": {"model_id": backbone.model_id, "trained": backbone.trained},
              "methods": methods, "confusion_pngs": pictures, "table": comparison_table(methods)}
    path = out_dir / f"{attr.name}-adaptation.json"
    path.write_text(json.dumps(report, indent=2))
    report["report_path"] = str(path)
    return report


def adaptation_table(reports: list[dict]) -> str:
    """One Markdown table over attributes: a zero-shot row and an adapted row per attribute, plus the gain."""
    lines = ["| attribute | method | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 2) + "|"]
    for report in reports:
        for name, metrics in report["methods"].items():
            cells = ["n/a" if metrics.get(c) is None else f"{metrics[c]:.4f}" for c in TABLE_COLUMNS]
            lines.append(f"| {report['attribute']} | {name} | " + " | ".join(cells) + " |")
        zs, ad = (report["methods"][k] for k in report["methods"])
        gains = ["n/a" if zs.get(c) is None or ad.get(c) is None else f"{ad[c] - zs[c]:+.4f}" for c in TABLE_COLUMNS]
        lines.append(f"| {report['attribute']} | gain | " + " | ".join(gains) + " |")
    return "\n".join(lines)
