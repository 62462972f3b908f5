"""The ``train-head`` Prefect flow: train (and optionally evaluate) one attribute's MHAdapter head.

A thin wrapper: the tasks call ``classify.jobs.train_head`` and ``classify.evaluate.evaluate_attribute``
with the same options as ``city-audit train`` / ``city-audit evaluate``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from classify.backbone import load_backbone
from classify.evaluate import evaluate_attribute
from classify.jobs import train_head as train_head_job
from contracts.notices import untrained_warning

stage = task(cache_policy=NO_CACHE)


@stage(name="train head")
def train(attribute: str, data: str, out: str, options: dict) -> dict:
    job = train_head_job(attribute, data, out, progress=False, **options)
    result = job.result
    return {"checkpoint": str(result.checkpoint), "best_epoch": result.fit.best_epoch,
            "val": {k: result.fit.best_metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")},
            "n_train": result.n_train, "n_val": result.n_val, "backbone_trained": job.backbone.trained}


@stage(name="evaluate heads")
def evaluate(attribute: str, data: str, model: str, weights: str | None, device: str | None, heads: str,
             out: str, split: str, cache_dir: str | None) -> dict:
    backbone = load_backbone(model, weights=weights, device=device)
    report = evaluate_attribute(attribute, data, backbone, out, heads_dir=heads, split=split, cache_dir=cache_dir,
                                progress=False)
    return {"report": report["report_path"], "table": report["table"]}


@flow(name="train-head", log_prints=True)
def train_head(attribute: str, data: str, model: str = "vit-b16", weights: str | None = None,
               device: str | None = None, out: str = "outputs/heads", mode: str | None = None,
               epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               weight_decay: float | None = None, patience: int | None = None, class_weighting: str | None = None,
               attention_heads: int | None = None, blend: float | None = None, seed: int | None = None,
               num_workers: int | None = None, resume: bool = False, cache_dir: str | None = None,
               evaluate_split: str | None = None) -> dict:
    """Train ``attribute``'s head on ``data`` (GSS folder or path,label CSV) into ``out``: the options of
    ``city-audit train`` (None keeps the reference value). With ``evaluate_split`` ("test" or "val")
    the new head is compared with the baselines afterwards. Returns the checkpoint path and best
    validation metrics (plus the evaluation table).
    """
    logger = get_run_logger()
    options = dict(model=model, weights=weights, device=device, mode=mode, epochs=epochs, batch_size=batch_size,
                   lr=lr, weight_decay=weight_decay, patience=patience, class_weighting=class_weighting,
                   attention_heads=attention_heads, blend=blend, seed=seed, num_workers=num_workers,
                   resume=resume, cache_dir=cache_dir)
    summary = train(attribute, data, out, options)
    if not summary["backbone_trained"]:
        logger.warning(untrained_warning(model, "this head is"))
    if evaluate_split:
        summary["evaluation"] = evaluate(attribute, data, model, weights, device, out, f"{out}/evaluation",
                                         evaluate_split, cache_dir)
    logger.info("trained %s head -> %s (val macro-F1 %.3f)", attribute, summary["checkpoint"],
                summary["val"]["macro_f1"])
    return summary
