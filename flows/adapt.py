"""The ``adapt-city`` Prefect flow: unsupervised adaptation of attribute heads to a city's own images.

A thin wrapper: its task calls ``classify.jobs.adapt_heads`` with the same options as ``city-audit adapt``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from classify.adapt_eval import adaptation_table
from classify.jobs import adapt_heads
from contracts.notices import untrained_warning

stage = task(cache_policy=NO_CACHE)


@stage(name="adapt heads")
def adapt(method: str, images: str, attributes: list[str] | None, out: str, settings: dict) -> dict:
    job = adapt_heads(method, images, attributes, out, progress=False, **settings)
    summary = {"checkpoints": {name: str(r.checkpoint) for name, r in job.results.items()}, "n_images": job.n_images,
               "backbone_trained": job.backbone.trained, "method_name": job.method_name}
    if job.reports:
        summary["table"] = adaptation_table(job.reports)
    return summary


@flow(name="adapt-city", log_prints=True)
def adapt_city(method: str, images: str, attributes: list[str] | None = None, model: str = "vit-b16",
               weights: str | None = None, device: str | None = None, out: str = "outputs/adapted",
               options: dict | None = None, method_options: dict | None = None, eval_data: str | None = None,
               eval_split: str = "test") -> dict:
    """Adapt ``attributes`` (default all 8) with ``method`` ("microclip" or "fair") on ``images`` (a run's
    output folder or a folder of images) into the heads folder ``out``: the options of ``city-audit adapt``.
    ``options`` override ``classify.adapt.AdaptConfig`` (epochs, max_steps, batch_size, ...), ``method_options``
    the method's config (``MicroCLIPConfig`` / ``FairConfig``). With ``eval_data`` the adapted heads are
    compared with zero-shot on that labelled set. Returns checkpoints (and the table).
    """
    logger = get_run_logger()
    summary = adapt(method, images, attributes, out, dict(model=model, weights=weights, device=device, options=options,
                                                          method_options=method_options, eval_data=eval_data,
                                                          eval_split=eval_split))
    if not summary["backbone_trained"]:
        logger.warning(untrained_warning(model, "adapted heads are"))
    if "table" in summary:
        logger.info("zero-shot vs %s:\n%s", summary["method_name"], summary["table"])
    logger.info("%s adapted %s on %d images -> %s", summary["method_name"], ", ".join(summary["checkpoints"]),
                summary["n_images"], out)
    return summary
