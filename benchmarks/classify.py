"""Throughput of the classification stage: 8 attributes from one backbone pass.

Measured in one run, on one batch of real sample images (repeated to the batch size):

1. bare open_clip ``model.encode_image`` on ready tensors (the reference cost of one CLIP forward);
2. our backbone pass (``forward_intermediates``: pooled embedding + penultimate patch tokens);
3. the backbone pass + 8 zero-shot heads;
4. the backbone pass + 8 CLIP-MHAdapter heads one after another (the old serving path);
5. the backbone pass + the 8 MHAdapter heads fused into one batched pass (``classify.fused``,
   what ``predict_attributes`` runs). Goal: at most 1.15x the bare forward.

then end to end (``predict_attributes``: JPEG decode in DataLoader workers, preprocessing, the
backbone and the fused heads) in images/s, on at least 256 images so the decode workers run.

    python benchmarks/classify.py                                          # CPU, tiny random model
    python benchmarks/classify.py --model vit-b16 --random-weights --batch-size 8 --threads 1
    python benchmarks/classify.py --model vit-b16 --random-weights --device cuda --batch-size 256 --images 4096

Variants run interleaved, one call each per round, so background load hits all of them alike.
Each ratio is taken per round (variant / bare forward of the same round) and the goal is judged
on the median over rounds; the spread (min-max of the per-round ratios) is printed beside it.
On the CPU ratios use process CPU seconds (robust to other jobs on a shared machine), on a GPU
wall time. When a CUDA device is present the table is measured a second time there, in bf16.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classify.backbone import Backbone, load_backbone, random_backbone  # noqa: E402
from classify.checkpoints import serving_heads  # noqa: E402
from classify.fused import HeadRunner  # noqa: E402
from classify.heads import zero_shot_heads  # noqa: E402
from classify.mhadapter import build_mhadapter_head  # noqa: E402
from classify.predict import default_num_workers, image_batches, predict_attributes  # noqa: E402
from classify.schema import ATTRIBUTES  # noqa: E402
from classify.train import REFERENCE_ADAPTERS  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "geo" / "sample_area" / "stuttgart"
GOAL = 1.15
BARE = "bare open_clip encode_image"
FUSED = "backbone + 8 MHAdapter heads, fused"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variants: dict, device: torch.device, repeats: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process CPU seconds of every call of ``variants[name]()``, interleaved round by round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    runs = {name: {"wall": [], "cpu": []} for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            runs[name]["wall"].append(time.perf_counter() - start)
            runs[name]["cpu"].append(time.process_time() - start_cpu)
    return runs


def per_round_ratios(runs: dict, name: str, clock: str) -> list[float]:
    """``name``'s time over the bare forward's, round by round."""
    return [t / b for t, b in zip(runs[name][clock], runs[BARE][clock])]


def sample_files(n: int) -> pd.DataFrame:
    """``n`` image rows cycling over the bundled sample JPEGs (unique ids)."""
    files = sorted(str(p) for p in (SAMPLE / "images").glob("*.jpg"))
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "file": [files[i % len(files)] for i in range(n)]})


def build_heads(backbone: Backbone, heads_dir: str | None) -> dict:
    """The MHAdapter heads to time: ``heads_dir``'s checkpoints, else fresh reference-config heads."""
    if heads_dir:
        return serving_heads(backbone, heads_dir)
    torch.manual_seed(0)
    return {name: build_mhadapter_head(backbone, a, REFERENCE_ADAPTERS[name]).eval() for name, a in ATTRIBUTES.items()}


def stage_table(backbone: Backbone, heads: dict, pixels: torch.Tensor, args) -> float:
    """Time the five variants on ``pixels``, print the table; returns the fused ratio's median."""
    device = backbone.device
    zs_heads, runner = zero_shot_heads(backbone), HeadRunner(heads)
    pixels = pixels.to(device)

    def bare():
        with torch.inference_mode(), backbone.autocast():
            return backbone.model.encode_image(pixels)

    def sequential(head_set):
        def run():
            features = backbone.encode_images(pixels)
            with torch.inference_mode():
                return [head(features) for head in head_set.values()]
        return run

    runs = timed({
        BARE: bare,
        "backbone pass (pooled + patch tokens)": lambda: backbone.encode_images(pixels),
        "backbone + 8 zero-shot heads": sequential(zs_heads),
        "backbone + 8 MHAdapter heads, one by one": sequential(heads),
        FUSED: lambda: runner(backbone.encode_images(pixels)),
    }, device, args.repeats, args.warmup)
    clock = "cpu" if device.type == "cpu" else "wall"
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"\nmodel {args.model} ({backbone.spec.open_clip_name}, weights: {backbone.weights_source}), device "
          f"{device} [{name}], {dtype}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"batch of {args.batch_size} images, {args.repeats} interleaved rounds; ratios per round on "
          f"{'process CPU seconds' if clock == 'cpu' else 'wall time'}, median [min-max] over rounds")
    print(f"{'':42} {'ms median':>10} {'img/s':>8} {'x bare median':>14} {'[spread]':>16}")
    for label, times in runs.items():
        ratios = per_round_ratios(runs, label, clock)
        median_s = statistics.median(times[clock])
        print(f"{label:42} {median_s * 1e3:10.1f} {args.batch_size / statistics.median(times['wall']):8.1f} "
              f"{statistics.median(ratios):14.3f} {f'[{min(ratios):.3f}-{max(ratios):.3f}]':>16}")
    fused = statistics.median(per_round_ratios(runs, FUSED, clock))
    print(f"8 attributes (MHAdapter, fused) cost {fused:.3f}x one bare CLIP image forward, median over rounds "
          f"(goal <= {GOAL}): {'met' if fused <= GOAL else 'NOT met'}")
    return fused


def end_to_end(backbone: Backbone, heads: dict, args, gpu_decode: bool) -> None:
    """predict_attributes over ``args.images`` JPEGs (after a one-batch warm-up); prints img/s."""
    files = sample_files(args.images)
    predict_attributes(files.head(args.batch_size), backbone, heads, batch_size=args.batch_size, num_workers=0,
                       progress=False, device_decode=gpu_decode)  # warm kernels and page cache
    workers = default_num_workers(args.images) if args.workers is None else args.workers
    _sync(backbone.device)
    start = time.perf_counter()
    result = predict_attributes(files, backbone, heads, batch_size=args.batch_size, num_workers=args.workers,
                                progress=False, device_decode=gpu_decode)
    _sync(backbone.device)
    rate = args.images / (time.perf_counter() - start)
    assert len(result.predictions) == args.images * len(ATTRIBUTES)
    decode = "on the device" if gpu_decode else f"in {workers} DataLoader workers"
    print(f"end to end on {backbone.device}, {args.images} JPEGs (decode {decode}, 8 fused MHAdapter heads): "
          f"{rate:.1f} img/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="a registry name (city-audit models) or ARCH/PRETRAINED")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", help="local backbone weights file")
    parser.add_argument("--random-weights", action="store_true", help="random weights of the architecture (no download)")
    parser.add_argument("--heads", help="a heads folder to time instead of freshly initialised MHAdapter heads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="images for the end-to-end run (>= 256: decode workers)")
    parser.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: auto)")
    parser.add_argument("--gpu-decode", action="store_true", help="also end to end with JPEG decode on the device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA bf16 table even if a GPU is present")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    if args.images < 256 and not args.skip_end_to_end:
        print(f"note: --images {args.images} < 256 does not measure the real decode path")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    def backbone_on(device: str) -> Backbone:
        if args.random_weights:
            return random_backbone(args.model, device)
        return load_backbone(args.model, weights=args.weights, device=device)

    backbone = backbone_on(args.device)
    (_, pixels, _), = list(image_batches(sample_files(args.batch_size)["file"].tolist(), backbone,
                                         batch_size=args.batch_size, num_workers=0, progress=False))
    devices = [backbone]
    if backbone.device.type == "cpu" and torch.cuda.is_available() and not args.no_cuda:
        devices.append(backbone_on("cuda"))
    for bb in devices:
        heads = build_heads(bb, args.heads)
        stage_table(bb, heads, pixels, args)
        if not args.skip_end_to_end:
            end_to_end(bb, heads, args, gpu_decode=False)
            if args.gpu_decode and bb.device.type == "cuda":
                end_to_end(bb, heads, args, gpu_decode=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
