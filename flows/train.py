"""The ``train-head`` Prefect flow: train (and optionally evaluate) one attribute's MHAdapter head.

A thin wrapper: each task calls one function of ``classify`` (``train_attribute``,
``evaluate_attribute``), exactly as ``city-audit train`` / ``city-audit evaluate`` do.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from classify.backbone import load_backbone
from classify.evaluate import evaluate_attribute
from classify.train import TrainConfig, train_attribute, with_overrides

stage = task(cache_policy=NO_CACHE)


@stage(name="train head")
def train(attribute: str, data: str, model: str, weights: str | None, device: str | None, out: str,
          config: TrainConfig, resume: bool, cache_dir: str | None) -> dict:
    backbone = load_backbone(model, weights=weights, device=device)
    result = train_attribute(attribute, data, backbone, out, config=config, resume=resume, cache_dir=cache_dir,
                             progress=False)
    return {"checkpoint": str(result.checkpoint), "best_epoch": result.fit.best_epoch,
            "val": {k: result.fit.best_metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")},
            "n_train": result.n_train, "n_val": result.n_val, "backbone_trained": backbone.trained}


@stage(name="evaluate heads")
def evaluate(attribute: str, data: str, model: str, weights: str | None, device: str | None, heads: str,
             out: str, split: str, cache_dir: str | None) -> dict:
    backbone = load_backbone(model, weights=weights, device=device)
    report = evaluate_attribute(attribute, data, backbone, out, heads_dir=heads, split=split, cache_dir=cache_dir,
                                progress=False)
    return {"report": report["report_path"], "table": report["table"]}


@flow(name="train-head", log_prints=True)
def train_head(attribute: str, data: str, model: str = "vit-b16", weights: str | None = None,
               device: str | None = None, out: str = "outputs/heads", mode: str = "augment",
               epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               class_weighting: str | None = None, seed: int | None = None, resume: bool = False,
               cache_dir: str | None = None, evaluate_split: str | None = None) -> dict:
    """Train ``attribute``'s head on ``data`` (GSS folder or path,label CSV) into ``out``.

    Options left as None keep the reference values (``classify.train.TrainConfig``). With
    ``evaluate_split`` ("test" or "val") the new head is compared with the baselines afterwards.
    Returns the checkpoint path and best validation metrics (plus the evaluation table).
    """
    logger = get_run_logger()
    config = with_overrides(TrainConfig(mode=mode), epochs=epochs, batch_size=batch_size, lr=lr,
                            class_weighting=class_weighting, seed=seed)
    summary = train(attribute, data, model, weights, device, out, config, resume, cache_dir)
    if not summary["backbone_trained"]:
        logger.warning("UNTRAINED backbone '%s': this head learned from random features; not a result.", model)
    if evaluate_split:
        summary["evaluation"] = evaluate(attribute, data, model, weights, device, out, f"{out}/evaluation",
                                         evaluate_split, cache_dir)
    logger.info("trained %s head -> %s (val macro-F1 %.3f)", attribute, summary["checkpoint"],
                summary["val"]["macro_f1"])
    return summary
