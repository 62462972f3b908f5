"""Batched inference: decode images, run the backbone once per batch, apply every head.

``predict_attributes`` takes a table of images (``image_id`` and an absolute ``file``) and
returns predictions in the long ``predictions`` contract plus a failures table for images that
could not be decoded. Decoding runs in a pool of threads (``image_batches``); CUDA gets pinned memory and
bf16 autocast, the CPU stays in fp32. ``device_decode=True`` reads only the file bytes in the
workers and decodes JPEGs with ``torchvision.io.decode_jpeg`` on the backbone's device (nvJPEG on
CUDA), then resizes and normalises there. With a ``feature_cache`` (``classify.features``),
images whose backbone outputs are cached skip decoding and the backbone entirely.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping

import pandas as pd
import pyarrow as pa
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from tqdm.auto import tqdm

from classify.backbone import Backbone, ImageFeatures
from classify.fused import HeadRunner
from classify.heads import Head
from contracts.errors import CityAuditError
from contracts.tables import PREDICTIONS


class _ImageFiles(Dataset):
    """Decodes and preprocesses images; a file that fails to decode yields its error message.

    ``preprocess=None`` returns the raw file bytes (uint8) for decoding on the device instead.
    """

    def __init__(self, files: list[str], preprocess):
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            if self.preprocess is None:
                return index, read_file(self.files[index]), None
            with Image.open(self.files[index]) as im:
                pixels = self.preprocess(im.convert("RGB"))
            return index, pixels, None
        except Exception as exc:  # noqa: BLE001 - any decode failure is recorded, not raised
            return index, None, f"{type(exc).__name__}: {exc}"


def _collate(items):
    good = [(i, px) for i, px, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    indices = [i for i, _ in good]
    if good and good[0][1].ndim == 1:  # raw bytes of varying length: keep a list
        return indices, [px for _, px in good], bad
    pixels = torch.stack([px for _, px in good]) if good else None
    return indices, pixels, bad


def device_preprocess(encoded: list[torch.Tensor], backbone: Backbone) -> tuple[list[int], torch.Tensor | None, list]:
    """Decode JPEG bytes on ``backbone.device`` and apply the eval transform there.

    Shorter side to the model's size (bicubic, antialiased), centre crop, scale to [0, 1],
    CLIP normalisation. Returns (positions decoded, pixels (B, 3, S, S), [(position, reason)]).
    """
    cfg = backbone.model.visual.preprocess_cfg
    size = backbone.image_size
    mean = torch.tensor(cfg["mean"], device=backbone.device).view(3, 1, 1)
    std = torch.tensor(cfg["std"], device=backbone.device).view(3, 1, 1)
    good, pixels, bad = [], [], []
    try:
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=backbone.device)
    except RuntimeError:  # one bad or non-JPEG file fails the batch call: go one by one
        decoded = []
        for position, data in enumerate(encoded):
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=backbone.device))
            except RuntimeError:
                try:  # PNG and friends: decode on the CPU, then continue on the device
                    decoded.append(decode_image(data, mode=ImageReadMode.RGB).to(backbone.device))
                except RuntimeError as exc:
                    decoded.append(None)
                    bad.append((position, f"RuntimeError: {exc}"))
    for position, image in enumerate(decoded):
        if image is None:
            continue
        image = TF.resize(image.float(), size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        image = TF.center_crop(image, [size, size]).div_(255).clamp_(0, 1)
        pixels.append((image - mean) / std)
        good.append(position)
    return good, (torch.stack(pixels) if pixels else None), bad


def image_batches(files: list[str], backbone: Backbone, *, batch_size: int = 32, num_workers: int | None = None,
                  device_decode: bool = False, progress: bool = True, desc: str = "classifying images"):
    """Yield ``(indices, pixels, bad)`` per batch: positions into ``files``, preprocessed pixels
    (B, 3, S, S) or None, and ``[(position, reason)]`` for files that failed to decode.

    Decoding runs in a pool of threads inside this process by default (PIL and the tensor
    transforms release the GIL: no worker start-up, nothing that can outlive the run; see
    ``decode_plan`` and benchmarks/README.md). ``num_workers`` > 0 (or ``CITY_AUDIT_DECODE=processes``)
    uses DataLoader worker processes instead; 0 decodes inline. With ``device_decode`` only the
    file bytes are read there and JPEG decoding happens on the backbone's device.
    """
    mode, workers = decode_plan(len(files), num_workers)
    dataset = _ImageFiles(files, None if device_decode else backbone.preprocess)
    pin = backbone.device.type == "cuda" and not device_decode
    if mode == "processes":
        batches = iter(DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate, pin_memory=pin,
            # Workers start from a clean forkserver: forking a process that runs Prefect's server and
            # logging threads (as a flow task does) can kill a worker at start-up.
            multiprocessing_context=_forkserver(), worker_init_fn=_WorkerGuard(os.getpid()),
        ))
    else:
        batches = _threaded_batches(dataset, batch_size, workers, pin)
    with tqdm(total=len(files), desc=desc, unit="img", disable=not progress) as bar:
        for indices, pixels, bad in batches:
            if device_decode and pixels is not None:
                good, pixels, device_bad = device_preprocess(pixels, backbone)
                bad = bad + [(indices[p], reason) for p, reason in device_bad]
                indices = [indices[p] for p in good]
            yield indices, pixels, bad
            bar.update(len(indices) + len(bad))


#: ``threads`` (default), ``processes`` (DataLoader worker processes) or ``inline``.
DECODE_ENV = "CITY_AUDIT_DECODE"
#: How many decode threads or processes (default: ``default_num_workers``).
DECODE_WORKERS_ENV = "CITY_AUDIT_DECODE_WORKERS"
DECODE_MODES = ("threads", "processes", "inline")


def decode_plan(n_images: int, num_workers: int | None = None) -> tuple[str, int]:
    """How ``n_images`` are decoded: (``threads`` | ``processes`` | ``inline``, worker count).

    An explicit ``num_workers`` means worker processes (0: inline), as DataLoader's argument does;
    otherwise ``$CITY_AUDIT_DECODE`` and ``$CITY_AUDIT_DECODE_WORKERS`` decide, by default a few
    threads. A bad value of either raises ``DecodeSettingError``."""
    if num_workers is not None:
        return ("processes", num_workers) if num_workers > 0 else ("inline", 0)
    mode = os.environ.get(DECODE_ENV, "").strip().lower() or "threads"
    if mode not in DECODE_MODES:
        raise DecodeSettingError(f"{DECODE_ENV}={mode!r} is not one of {', '.join(DECODE_MODES)}; "
                                 f"unset it for the default (threads)")
    raw = os.environ.get(DECODE_WORKERS_ENV, "").strip()
    if raw and not (raw.isdigit() and int(raw) > 0):
        raise DecodeSettingError(f"{DECODE_WORKERS_ENV}={raw!r} is not a positive whole number; unset it for the "
                                 f"default")
    if mode == "inline" or n_images == 0:
        return "inline", 0
    if mode == "processes":
        return mode, int(raw) if raw else max(1, default_num_workers(n_images))
    return mode, int(raw) if raw else min(4, max(1, os.cpu_count() or 1), n_images)


class DecodeSettingError(CityAuditError):
    """A bad ``CITY_AUDIT_DECODE`` or ``CITY_AUDIT_DECODE_WORKERS``."""


def _threaded_batches(dataset: "_ImageFiles", batch_size: int, threads: int, pin: bool, prefetch_batches: int = 2):
    """Batches of ``dataset`` in order, decoded by ``threads`` threads (0: inline), up to
    ``prefetch_batches`` batches ahead of the consumer."""
    spans = iter(range(0, len(dataset), batch_size))

    def finish(items):
        indices, pixels, bad = _collate(items)
        if pin and pixels is not None:
            pixels = pixels.pin_memory()
        return indices, pixels, bad

    if threads <= 0:
        for start in spans:
            yield finish([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="city-audit-decode")
    pending: deque = deque()

    def submit() -> None:
        start = next(spans, None)
        if start is not None:
            pending.append([pool.submit(dataset.__getitem__, i)
                            for i in range(start, min(start + batch_size, len(dataset)))])

    try:
        for _ in range(prefetch_batches + 1):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield finish([f.result() for f in futures])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_FORKSERVER = None


def _forkserver():
    """The forkserver context for decode worker processes, preloading only this module's light imports.

    Without a preload every worker re-imports whatever unpickling the dataset needs (this module, hence
    torch and open_clip: ~20 s per run measured). With it the forkserver imports once and workers fork
    from it ready."""
    global _FORKSERVER
    if _FORKSERVER is None:
        import multiprocessing

        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["classify.predict"])
    return _FORKSERVER


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); no-op elsewhere.

    ``expected_parent``: the parent's pid at fork time; if it is already gone (it died before the call)
    the process exits at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:  # no glibc (musl, say): the pid watch below still ends the process
            pass
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


class _WorkerGuard:
    """DataLoader ``worker_init_fn``: the worker dies with its forkserver (PDEATHSIG) and leaves as soon as
    the run process ``run_pid`` is gone (checked every 0.5 s), so ``kill -9`` of the run leaves no worker."""

    def __init__(self, run_pid: int):
        self.run_pid = run_pid

    def __call__(self, worker_id: int) -> None:
        die_with_parent()
        threading.Thread(target=_exit_without, args=(self.run_pid,), daemon=True,
                         name="city-audit-run-watch").start()


def _exit_without(pid: int, interval_s: float = 0.5) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # a pid reused by another user's process: ours is gone
            os._exit(1)
        time.sleep(interval_s)


@dataclass
class PredictionResult:
    predictions: pa.Table  # PREDICTIONS
    failures: pd.DataFrame  # image_id, stage, reason


def default_num_workers(n_images: int) -> int:
    """Worker processes for decoding in ``processes`` mode: none for a handful of images, else up to 8."""
    if n_images < 64:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _append_predictions(columns: dict[str, list], image_ids: list[str], features: ImageFeatures,
                        heads: Mapping[str, Head], model_ids: Mapping[str, str], runner: HeadRunner) -> None:
    logits = runner(features)
    for name, head in heads.items():
        with torch.inference_mode():
            probs = logits[name].float().softmax(dim=-1).cpu()
        confidence, best = probs.max(dim=-1)
        classes = head.attribute.classes
        n = len(image_ids)
        columns["image_id"] += image_ids
        columns["attribute"] += [name] * n
        columns["label"] += [classes[int(b)] for b in best]
        columns["confidence"] += confidence.tolist()
        columns["probabilities"] += [list(zip(classes, row)) for row in probs.tolist()]
        columns["method"] += [head.method] * n
        columns["model_id"] += [model_ids[name]] * n


def predict_attributes(images: pd.DataFrame, backbone: Backbone, heads: Mapping[str, Head], *,
                       batch_size: int = 32, num_workers: int | None = None, progress: bool = True,
                       device_decode: bool = False, feature_cache=None) -> PredictionResult:
    """Classify every image for every head, from one backbone pass per image.

    ``images`` needs columns ``image_id`` and ``file`` (a readable path). Returns one prediction
    row per (image, attribute) with the label, its probability as ``confidence``, all class
    probabilities and the head's method; undecodable images go to ``failures``. MHAdapter heads
    run fused (``classify.fused.HeadRunner``), the same logits as one by one.
    ``feature_cache``: a ``classify.features.FeatureCache`` for this backbone; cached images
    skip the backbone, new ones are added. ``device_decode``: decode JPEGs on the device.
    """
    files = images["file"].astype(str).tolist()
    ids = images["image_id"].astype(str).tolist()
    columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}
    failures = []
    model_ids = {name: f"{backbone.model_id}+{head.head_id}" for name, head in heads.items()}
    runner = HeadRunner(heads)  # the MHAdapter heads run as one fused, batched pass
    # adapted heads (microCLIP, FAIR-style) run their own image tower on the pixels: no skipping the decode
    needs_pixels = any(getattr(head, "needs_pixels", False) for head in heads.values())
    keys = feature_cache.keys(files) if feature_cache is not None else [None] * len(files)  # content hashes
    cached = [i for i, key in enumerate(keys)
              if feature_cache is not None and not needs_pixels and feature_cache.has(key)]
    for start in range(0, len(cached), batch_size):
        rows = cached[start:start + batch_size]
        batch_ids = [ids[i] for i in rows]
        features = feature_cache.get([keys[i] for i in rows]).to(backbone.device)
        _append_predictions(columns, batch_ids, features, heads, model_ids, runner)
    todo = sorted(set(range(len(ids))) - set(cached))
    for indices, pixels, bad in image_batches([files[i] for i in todo], backbone, batch_size=batch_size,
                                              num_workers=num_workers, device_decode=device_decode,
                                              progress=progress):
        failures += [(ids[todo[i]], "classify", reason) for i, reason in bad]
        if pixels is not None:
            features = backbone.encode_images(pixels)
            batch_ids = [ids[todo[i]] for i in indices]
            if feature_cache is not None:
                feature_cache.put([keys[todo[i]] for i in indices], features)
            if needs_pixels:
                features.pixels = pixels.to(backbone.device)
            _append_predictions(columns, batch_ids, features, heads, model_ids, runner)
    table = pa.Table.from_pydict(columns, schema=PREDICTIONS)
    return PredictionResult(table, pd.DataFrame(failures, columns=["image_id", "stage", "reason"]))
