"""Throughput of the classification stage: 8 attributes from one backbone pass.

Measured in one run, on one batch of real sample images (repeated to the batch size):

1. bare open_clip ``model.encode_image`` on ready tensors (the reference cost of one CLIP forward);
2. our backbone pass (``forward_intermediates``: pooled embedding + penultimate patch tokens);
3. the backbone pass + 8 zero-shot heads;
4. the backbone pass + 8 CLIP-MHAdapter heads (goal: at most 1.15x the bare forward);

then end to end (``predict_attributes``: JPEG decode in DataLoader workers, preprocessing, the
backbone and 8 MHAdapter heads) in images/s, against the bare forward on ready tensors.

    python benchmarks/classify.py                                 # CPU, tiny random model (default)
    python benchmarks/classify.py --model vit-b16 --device cuda   # bf16 autocast; needs the weights
    python benchmarks/classify.py --model vit-b16 --device cuda --random-weights   # same shapes, no download

Heads are freshly initialised with each attribute's reference settings unless ``--heads DIR``
(timing does not depend on trained values). ``--repeats`` rounds run every variant once, so
background load hits all of them alike. On the CPU the headline ratio uses process CPU seconds,
which other jobs on a shared machine barely disturb; on a GPU it uses the fastest wall time.
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

from classify.backbone import BACKBONES, Backbone, load_backbone  # noqa: E402
from classify.checkpoints import serving_heads  # noqa: E402
from classify.heads import zero_shot_heads  # noqa: E402
from classify.mhadapter import build_mhadapter_head  # noqa: E402
from classify.predict import image_batches, predict_attributes  # noqa: E402
from classify.schema import ATTRIBUTES  # noqa: E402
from classify.train import REFERENCE_ADAPTERS  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "geo" / "sample_area" / "stuttgart"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(variants: dict, device: torch.device, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Per variant: fastest and median wall seconds, and the fewest process CPU seconds, of
    ``variants[name]()``, interleaved round by round so background load hits all alike."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"min": min(wall[name]), "median": statistics.median(wall[name]), "cpu": min(cpu[name])}
            for name in variants}


def random_weights_backbone(name: str, device: str) -> Backbone:
    """The registered architecture with seeded random weights (no download): for timing only."""
    import open_clip

    spec = BACKBONES[name]
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(spec.open_clip_name, pretrained=None)
    return Backbone(spec, model, preprocess, torch.device(device), trained=False, weights_source="random (benchmark)")


def sample_files(n: int) -> pd.DataFrame:
    """``n`` image rows cycling over the bundled sample JPEGs (unique ids)."""
    files = sorted(str(p) for p in (SAMPLE / "images").glob("*.jpg"))
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "file": [files[i % len(files)] for i in range(n)]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=list(BACKBONES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", help="local backbone weights file")
    parser.add_argument("--random-weights", action="store_true", help="random weights of the architecture (no download)")
    parser.add_argument("--heads", help="a heads folder to time instead of freshly initialised MHAdapter heads")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=128, help="images for the end-to-end run")
    parser.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: auto)")
    parser.add_argument("--gpu-decode", action="store_true", help="end to end with JPEG decode on the device")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    backbone = (random_weights_backbone(args.model, args.device) if args.random_weights
                else load_backbone(args.model, weights=args.weights, device=args.device))
    device = backbone.device
    if args.heads:
        mh_heads = serving_heads(backbone, args.heads)
    else:
        torch.manual_seed(0)
        mh_heads = {name: build_mhadapter_head(backbone, a, REFERENCE_ADAPTERS[name]).eval()
                    for name, a in ATTRIBUTES.items()}
    zs_heads = zero_shot_heads(backbone)
    frame = sample_files(args.batch_size)
    (_, pixels, _), = list(image_batches(frame["file"].tolist(), backbone, batch_size=args.batch_size,
                                         num_workers=0, progress=False))
    pixels = pixels.to(device)

    def bare():
        with torch.inference_mode(), backbone.autocast():
            return backbone.model.encode_image(pixels)

    def with_heads(heads):
        def run():
            features = backbone.encode_images(pixels)
            with torch.inference_mode():
                return [head(features) for head in heads.values()]
        return run

    rows = timed({
        "bare open_clip encode_image": bare,
        "backbone pass (pooled + patch tokens)": lambda: backbone.encode_images(pixels),
        "backbone + 8 zero-shot heads": with_heads(zs_heads),
        "backbone + 8 MHAdapter heads": with_heads(mh_heads),
    }, device, args.repeats, args.warmup)
    bare_t = rows["bare open_clip encode_image"]
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"model {args.model} ({backbone.spec.open_clip_name}, weights: {backbone.weights_source}), device "
          f"{device} [{name}], {dtype}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"batch of {args.batch_size} images, {args.repeats} interleaved runs; img/s and 'x bare' use the fastest "
          f"wall time, 'x bare CPU' the fewest CPU seconds of this process (robust to other load on the CPU)")
    print(f"{'':40} {'ms min':>10} {'ms median':>10} {'img/s':>9} {'x bare':>8} {'x bare CPU':>11}")
    for label, t in rows.items():
        print(f"{label:40} {t['min'] * 1e3:10.2f} {t['median'] * 1e3:10.2f} {args.batch_size / t['min']:9.1f} "
              f"{t['min'] / bare_t['min']:8.3f} {t['cpu'] / bare_t['cpu']:11.3f}")
    heads_t = rows["backbone + 8 MHAdapter heads"]
    ratio = heads_t["cpu" if device.type == "cpu" else "min"] / bare_t["cpu" if device.type == "cpu" else "min"]
    print(f"8 attributes (MHAdapter) cost {ratio:.3f}x one bare CLIP image forward (goal <= 1.15): "
          f"{'met' if ratio <= 1.15 else 'NOT met'}")
    files = sample_files(args.images)

    def end_to_end():
        return predict_attributes(files, backbone, mh_heads, batch_size=args.batch_size, num_workers=args.workers,
                                  progress=False, device_decode=args.gpu_decode)

    end_to_end()  # warm the workers' page cache and kernels
    _sync(device)
    start = time.perf_counter()
    result = end_to_end()
    _sync(device)
    e2e = args.images / (time.perf_counter() - start)
    assert len(result.predictions) == args.images * len(ATTRIBUTES)
    bare_rate = args.batch_size / bare_t["min"]
    decode = "on the device" if args.gpu_decode else "in DataLoader workers"
    print(f"end to end, {args.images} JPEGs (decode {decode}, 8 MHAdapter heads): {e2e:.1f} img/s "
          f"= {e2e / bare_rate:.3f}x the bare forward on ready tensors ({bare_rate:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
