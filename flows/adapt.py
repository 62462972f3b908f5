"""The ``adapt-city`` Prefect flow: unsupervised adaptation of attribute heads to a city's own images.

A thin wrapper: each task calls one function of ``classify`` (``adapt_images``,
``compare_adapted``), exactly as ``city-audit adapt`` does.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from classify.adapt import AdaptConfig, adapt_images, get_method, image_files, method_config
from classify.adapt_eval import adaptation_table, compare_adapted
from classify.backbone import load_backbone
from classify.schema import ATTRIBUTES

stage = task(cache_policy=NO_CACHE)


@stage(name="adapt heads")
def adapt(method: str, images: str, attributes: list[str], model: str, weights: str | None, device: str | None,
          out: str, options: dict, method_options: dict) -> dict:
    backbone = load_backbone(model, weights=weights, device=device)
    files = image_files(images)
    results = adapt_images(method, files, attributes, backbone, out, config=replace(AdaptConfig(), **options),
                           method_config=method_config(method, method_options), progress=False)
    return {"checkpoints": {name: str(r.checkpoint) for name, r in results.items()}, "n_images": len(files),
            "backbone_trained": backbone.trained}


@stage(name="compare with zero-shot")
def compare(attributes: list[str], data: str, model: str, weights: str | None, device: str | None, heads: str,
            split: str) -> str:
    backbone = load_backbone(model, weights=weights, device=device)
    return adaptation_table([compare_adapted(name, data, backbone, heads, heads, split=split, progress=False)
                             for name in attributes])


@flow(name="adapt-city", log_prints=True)
def adapt_city(method: str, images: str, attributes: list[str] | None = None, model: str = "vit-b16",
               weights: str | None = None, device: str | None = None, out: str = "outputs/adapted",
               options: dict | None = None, method_options: dict | None = None, eval_data: str | None = None, eval_split: str = "test") -> dict:
    """Adapt ``attributes`` (default all 8) with ``method`` ("microclip" or "fair") on ``images`` (a run's
    output folder or a folder of images) into the heads folder ``out``. ``options`` override
    ``classify.adapt.AdaptConfig`` (epochs, max_steps, batch_size, ...), ``method_options`` the method's
    config (``MicroCLIPConfig`` / ``FairConfig``). With ``eval_data`` the adapted
    heads are compared with zero-shot on that labelled set. Returns checkpoints (and the table).
    """
    logger = get_run_logger()
    attributes = attributes or list(ATTRIBUTES)
    summary = adapt(method, images, attributes, model, weights, device, out, options or {}, method_options or {})
    summary["method_name"] = get_method(method).display_name
    if not summary["backbone_trained"]:
        logger.warning("UNTRAINED backbone '%s': adapted heads are a pipeline check, not models.", model)
    if eval_data:
        summary["table"] = compare(attributes, eval_data, model, weights, device, out, eval_split)
        logger.info("zero-shot vs %s:\n%s", summary["method_name"], summary["table"])
    logger.info("%s adapted %s on %d images -> %s", summary["method_name"], ", ".join(attributes),
                summary["n_images"], out)
    return summary
