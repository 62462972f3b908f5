"""Peak memory of the classification stage against the image count: chunks on disk vs one chunk.

A synthetic image store of N small files (distinct bytes, so distinct content hashes) with the
feature cache (``classify.features``) filled with fixed features for every file: the backbone
is skipped, so what grows with N is the stage's own bookkeeping, never the CLIP forward. Each
(size, chunking) pair runs in a fresh process (``classify.stage.classify_image_store`` with the
tiny backbone on the CPU) and reports its peak RSS, the RSS after the backbone and heads are
loaded, and the wall time. Printed: both, and the ratio of the peak growth between the two
sizes for chunked (the default chunk) and one chunk (the old stage: the whole table in memory).

    .venv/bin/python benchmarks/classify_memory.py --sizes 2000 20000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _prepare(root: Path, n: int) -> None:
    """``root/store`` with n files and ``root/images.parquet``; ``root/features`` filled for every file."""
    import pandas as pd
    import torch

    from classify.backbone import ImageFeatures, load_backbone
    from classify.features import FeatureCache

    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        data = f"synthetic image {i:08d}\n".encode()
        (store / f"{i:08d}.jpg").write_bytes(data)
        rows.append({"image_id": f"{i:08d}", "path": f"{i:08d}.jpg", "sha256": hashlib.sha256(data).hexdigest()})
    pd.DataFrame(rows).to_parquet(root / "images.parquet", index=False)
    backbone = load_backbone("tiny", device="cpu")
    cache = FeatureCache(root / "features", backbone)
    probe = backbone.encode_images(torch.zeros(1, 3, backbone.image_size, backbone.image_size))
    generator = torch.Generator().manual_seed(0)
    pooled = torch.randn(probe.pooled.shape, generator=generator)
    tokens = torch.randn(probe.patch_tokens.shape, generator=generator)
    for start in range(0, n, 256):
        keys = [rows[i]["sha256"] for i in range(start, min(n, start + 256))]
        cache.put(keys, ImageFeatures(pooled.expand(len(keys), -1), tokens.expand(len(keys), -1, -1)))


def _measure(root: Path, n: int, chunk_images: int) -> dict:
    """In this process: classify the first n images; peak RSS (MiB), RSS after loading, seconds."""
    import pandas as pd

    from classify.backbone import load_backbone
    from classify.checkpoints import serving_heads
    from classify.stage import classify_image_store

    images = pd.read_parquet(root / "images.parquet").head(n)
    backbone = load_backbone("tiny", device="cpu")
    serving_heads(backbone)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=root) as work:
        result = classify_image_store(images, root / "store", backbone=backbone, cache_dir=Path(work),
                                      feature_cache=root / "features", chunk_images=chunk_images, progress=False)
        rows = sum(pq_rows(p) for p in result.prediction_files)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert rows == n * 8, (rows, n)
    return {"images": n, "chunk_images": chunk_images, "chunks": len(result.chunks), "loaded_mib": loaded,
            "peak_mib": peak, "seconds": seconds}


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--chunk-images", type=int, default=None, help="default: classify.stage.DEFAULT_CHUNK_IMAGES")
    parser.add_argument("--root", type=Path, default=None, help="keep the synthetic store here (default: a temp folder)")
    parser.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        root, n, chunk = args._measure
        print(json.dumps(_measure(Path(root), int(n), int(chunk))))
        return
    from classify.stage import DEFAULT_CHUNK_IMAGES

    chunk = args.chunk_images or DEFAULT_CHUNK_IMAGES
    small, large = args.sizes
    with tempfile.TemporaryDirectory(prefix="classify-memory-") as tmp:
        root = args.root or Path(tmp)
        if not (root / "images.parquet").is_file():
            start = time.perf_counter()
            _prepare(root, large)
            print(f"prepared {large} images and their cached features in {time.perf_counter() - start:.0f} s")
        results = {}
        for n in (small, large):
            for label, size in (("chunked", chunk), ("one chunk", max(n, 1))):
                out = subprocess.run([sys.executable, __file__, "--_measure", str(root), str(n), str(size)],
                                     check=True, capture_output=True, text=True).stdout
                results[(label, n)] = r = json.loads(out.strip().splitlines()[-1])
                print(f"{label:>9} {n:>7} images: {r['chunks']:>3} chunk(s), peak RSS {r['peak_mib']:7.0f} MiB "
                      f"(after loading the model {r['loaded_mib']:5.0f} MiB, growth {r['peak_mib'] - r['loaded_mib']:6.0f}"
                      f" MiB), {r['seconds']:6.1f} s, {n / r['seconds']:6.0f} images/s")
        for label in ("chunked", "one chunk"):
            growth = [results[(label, n)]["peak_mib"] - results[(label, n)]["loaded_mib"] for n in (small, large)]
            peaks = [results[(label, n)]["peak_mib"] for n in (small, large)]
            print(f"{label}: peak RSS {large} / {small} images = {peaks[1] / peaks[0]:.2f}x; growth above the loaded "
                  f"model {growth[1] / max(growth[0], 1):.2f}x for {large / small:.0f}x the images")
        print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
