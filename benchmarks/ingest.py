"""Mapillary ingestion benchmark: throughput against the fake server as a ratio of the rate limit, and peak memory.

    PYTHONPATH=. python benchmarks/ingest.py                      # both parts, defaults below
    PYTHONPATH=. python benchmarks/ingest.py --skip-memory --rpm 6000 --images 2000

1. Throughput. The fake Mapillary server runs in its own process with ``--latency-ms`` (50)
   on every answer. The downloader fetches ``--images`` images (one entity request for a fresh
   URL, then the thumbnail) with ``entity_rpm = thumbs_rpm = --rpm``. Printed: images per
   minute divided by the configured rate (goal >= 0.9).
2. Memory. For each of ``--memory-sizes`` (10,000 and 100,000 images) a fresh process selects
   and downloads that many images through an in-process transport that answers like the fake
   server (so the network does not dominate), and reports its peak RSS above the RSS before the
   download (which holds the in-process fake and the table of selected images). Printed: that peak while
   downloading for each size and their ratio (goal: flat, close to 1), then the peak including
   the final images table, which necessarily has one row per image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "MLY|bench|benchmark-token"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MAPILLARY_ACCESS_TOKEN": TOKEN}


def throughput(rpm: float, images: int, latency_ms: float, concurrency: int) -> dict:
    """Images per minute against the fake server at ``latency_ms``, divided by ``rpm``."""
    streets = 10
    spacing_m = max(0.5, 2 * 300 * 0.95 * 2 * streets / images)
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_mapillary", "--streets", str(streets),
                               "--spacing-m", str(spacing_m), "--latency-ms", str(latency_ms), "--token", TOKEN],
                              cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        url, bbox, _ = server.stdout.readline().split()
        os.environ.update(MAPILLARY_GRAPH_URL=url, MAPILLARY_TILES_URL=url, MAPILLARY_ACCESS_TOKEN=TOKEN)
        from geo.bbox import parse_bbox
        from geo.mapillary import MapillarySource

        source = MapillarySource({"entity_rpm": rpm, "thumbs_rpm": rpm, "tiles_rpm": 60_000, "search_rpm": 60_000,
                                  "concurrency": concurrency, "max_images": images})
        area = parse_bbox(bbox)
        selected = source.select([source.discover_tile(t, area) for t in source.tiles(area)], area)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            result = source.download_tile(selected, Path(folder) / "images", Path(folder) / "manifest.sqlite",
                                          progress=False)
            elapsed_s = time.perf_counter() - start
        done = len(result.images)
        per_minute = 60.0 * done / elapsed_s
        return {"images": done, "failures": len(result.failures), "elapsed_s": round(elapsed_s, 2),
                "images_per_minute": round(per_minute, 1), "configured_rpm": rpm,
                "ratio": round(per_minute / rpm, 3), "latency_ms": latency_ms}
    finally:
        server.kill()
        server.wait()


def _rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakSampler:
    """Samples the resident memory every few milliseconds in a thread and keeps the maximum."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import threading

        self.peak_mb, self._stop, self._interval_s = _rss_mb(), threading.Event(), interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def restart(self) -> float:
        """Return the peak so far and start a new one from the current RSS."""
        peak, self.peak_mb = max(self.peak_mb, _rss_mb()), _rss_mb()
        return peak

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def memory_child(count: int) -> None:
    """Download ``count`` selected images through an in-process fake; print peak RSS above the start as JSON."""
    import httpx

    from geo.mapillary import MapillarySource
    from geo.mapillary.client import MapillaryClient
    from geo.mapillary.options import resolve_token
    from geo.mapillary.select import records_frame
    from tests.fake_mapillary import FakeMapillary, synthetic_city

    streets = 20
    city = synthetic_city(n_streets=streets, half_size_m=300.0, spacing_m=2 * 300 * 0.95 * 2 * streets / count)
    fake = FakeMapillary(city.images[:count], token=TOKEN)  # never started: its answers are called directly
    del city

    def answer(request: httpx.Request) -> httpx.Response:
        parts = [p for p in request.url.path.split("/") if p]
        query = dict(request.url.params)
        if parts[0] == "thumbs":
            status, body = fake.thumbnail(parts[1], parts[2].split(".")[0], query)
        else:
            status, body = fake.entity(parts[0], query)
        return httpx.Response(status, content=body)

    class InProcess(MapillarySource):
        def client(self) -> MapillaryClient:
            return MapillaryClient(resolve_token(), self.options, transport=httpx.MockTransport(answer))

    fields = {"id", "geometry", "captured_at", "compass_angle", "sequence", "is_pano"}
    from geo.mapillary.records import graph_record

    candidates = records_frame(graph_record({k: v for k, v in image.items() if k in fields})
                               for image in fake.images.values())
    candidates["tile"] = "14/0/0"
    os.environ.update(MAPILLARY_GRAPH_URL="http://fake.invalid", MAPILLARY_TILES_URL="http://fake.invalid")
    source = InProcess({"entity_rpm": 1e9, "thumbs_rpm": 1e9, "concurrency": 16})
    import gc

    from geo.mapillary.download import download_images
    from geo.mapillary.manifest import Manifest
    from geo.mapillary.source import collection, run_sync

    selected = source.select(candidates)  # the input of the download, like the candidates: one row per image
    del candidates
    gc.collect()
    before_mb = _rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, PeakSampler() as sampler:
        manifest = Manifest(Path(folder) / "manifest.sqlite")
        rows = ({k: v for k, v in zip(selected.columns, row)} for row in selected.itertuples(index=False, name=None))

        async def run():
            async with source.client() as client:
                return await download_images(client, rows, Path(folder) / "images", manifest, source.options)

        present, failures = run_sync(run())
        download_peak_mb = sampler.restart()
        result = collection(manifest.images_table(selected["image_id"]), failures)
    print(json.dumps({"images": len(result.images), "present": present, "failures": len(result.failures),
                      "setup_rss_mb": round(before_mb, 1),
                      "download_mb": round(download_peak_mb - before_mb, 1),
                      "with_table_mb": round(max(download_peak_mb, sampler.peak_mb) - before_mb, 1),
                      "elapsed_s": round(time.perf_counter() - start, 1)}))


def memory(sizes: list[int]) -> dict:
    """Peak RSS of the download pipeline for each size, each in a fresh process."""
    results = {}
    for count in sizes:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", str(count)],
                             cwd=REPO, env=_env(), capture_output=True, text=True, check=True)
        results[count] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {count:>7} images: {results[count]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=3000.0, help="configured entity and thumbnail rate limit")
    parser.add_argument("--images", type=int, default=1500, help="images for the throughput part")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--memory-sizes", default="10000,100000")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if not args.skip_throughput:
        print("throughput against the fake server:", flush=True)
        result = throughput(args.rpm, args.images, args.latency_ms, args.concurrency)
        print(f"  {result}")
        print(f"throughput ratio (images per minute / configured rpm, goal >= 0.9): {result['ratio']:.3f}")
    if not args.skip_memory:
        sizes = [int(s) for s in args.memory_sizes.split(",")]
        print("peak memory of select + download (fresh process per size):", flush=True)
        results = memory(sizes)
        small, large = results[min(sizes)], results[max(sizes)]
        n_small, n_large = min(sizes), max(sizes)
        print(f"memory while downloading (peak RSS above the RSS before it): {small['download_mb']} MB for "
              f"{n_small:,} images, {large['download_mb']} MB for {n_large:,}: ratio "
              f"{large['download_mb'] / max(small['download_mb'], 0.1):.2f} (goal: flat, close to 1)")
        growth_kb = (large["with_table_mb"] - small["with_table_mb"]) * 1024 / (n_large - n_small)
        print(f"memory including the final images table: {small['with_table_mb']} MB and {large['with_table_mb']} MB; "
              f"{growth_kb:.2f} KB per extra image (the output table itself, one row per image)")


if __name__ == "__main__":
    main()
