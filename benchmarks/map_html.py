"""map.html at city size: file size and the time headless Chromium needs to open and draw it.

    PYTHONPATH=. python benchmarks/map_html.py                          # 100,000 segments, idle and with burners
    PYTHONPATH=. python benchmarks/map_html.py --segments 20000 --burners 0 --repeats 1

A synthetic run (``--segments`` road segments of 2-5 vertices on a ~12 x 12 km street grid around
Stuttgart, street names from a pool of 800, all 8 attributes labelled, ``--images`` images) is
written with ``warehouse.map_html.write_map_html``. Then Debian's ``chromium`` (headless, network
off, as in tests/test_publish_offline.py) opens the file from disk ``--repeats`` times, idle and
then with ``--burners`` processes spinning on the CPU:

- ``drawn``: seconds from navigation start to the first animation frame after the page's load
  event (a probe script added to a copy of the page logs it to the console): the page has read and
  parsed its data, built the map and painted the segments by then (Leaflet's own canvas renderer,
  as before this benchmark, paints in that frame too);
- ``load event``: navigation start to the load event;
- ``chromium --screenshot wall``: the whole headless process, start-up and shut-down included
  (it idles a few seconds after the picture), and the same for an empty page.

Printed: bytes, bytes per segment, the medians, and ratios to the targets (50 MB, 10 s to drawn).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classify.schema import ATTRIBUTES  # noqa: E402
from warehouse.map_html import write_map_html  # noqa: E402

CLASSES = {name: a.classes for name, a in ATTRIBUTES.items()}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--window-size=1200,900", "--hide-scrollbars"]


def synthetic_run(n_segments: int, n_images: int, seed: int = 0) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """A city-sized run: segments as short polylines on a jittered grid, every attribute labelled."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_segments)))
    cell = 0.11 / side  # ~12 km across in lon at 48.8 N (a bit less in lat), whatever the count
    i = np.arange(n_segments)
    x0 = 9.05 + (i % side) * cell + rng.normal(0, cell / 10, n_segments)
    y0 = 48.72 + (i // side) * cell * 0.66 + rng.normal(0, cell / 10, n_segments)
    n_vertices = rng.integers(2, 6, n_segments)
    step = cell / np.maximum(n_vertices - 1, 1)
    horizontal = rng.random(n_segments) < 0.5
    lines = []
    for k in range(n_segments):
        t = np.arange(n_vertices[k])
        dx, dy = (step[k], 0.0) if horizontal[k] else (0.0, step[k] * 0.66)
        xs = x0[k] + t * dx + rng.normal(0, cell / 60, len(t))
        ys = y0[k] + t * dy + rng.normal(0, cell / 60, len(t))
        lines.append(np.column_stack([xs, ys]))
    geometry = [shapely.LineString(c) for c in lines]
    names = np.array([f"{w}straße" for w in (f"Beispiel{j}" for j in range(800))], dtype=object)
    highway = np.array(["primary", "secondary", "tertiary", "residential", "service"], dtype=object)
    columns = {"segment_id": [f"osm:{100_000_000 + k // 4}:{k % 4}" for k in range(n_segments)],
               "osm_way_id": 100_000_000 + i // 4, "highway": highway[rng.integers(0, len(highway), n_segments)],
               "name": names[(i // 12) % len(names)], "length_m": rng.random(n_segments) * 100,
               "n_images": rng.integers(0, 12, n_segments)}
    has_images = columns["n_images"] > 0
    for attribute, classes in CLASSES.items():
        labels = np.array(classes, dtype=object)[rng.integers(0, len(classes), n_segments)]
        columns[f"{attribute}_label"] = np.where(has_images, labels, None)
        share = rng.random(n_segments)
        columns[f"{attribute}_share"] = np.where(has_images, share, np.nan)
        columns[f"{attribute}_share_ci_low"] = np.where(has_images, share * 0.6, np.nan)
        columns[f"{attribute}_share_ci_high"] = np.where(has_images, np.minimum(share * 1.3, 1), np.nan)
    segments = gpd.GeoDataFrame(columns, geometry=geometry, crs="EPSG:4326")
    pick = rng.integers(0, n_segments, n_images)
    points = shapely.line_interpolate_point(np.asarray(segments.geometry)[pick], rng.random(n_images), normalized=True)
    image_columns = {"image_id": [str(10**12 + k) for k in range(n_images)],
                     "captured_at": np.datetime64("2024-05-01T10:00:00") + rng.integers(0, 10**7, n_images).astype("timedelta64[s]"),
                     "segment_id": np.array(columns["segment_id"], dtype=object)[pick],
                     "distance_m": rng.random(n_images) * 20, "unmatched_reason": [None] * n_images,
                     "path": [f"{k}.jpg" for k in range(n_images)]}
    for attribute, classes in CLASSES.items():
        image_columns[f"{attribute}_label"] = np.array(classes, dtype=object)[rng.integers(0, len(classes), n_images)]
        image_columns[f"{attribute}_confidence"] = rng.random(n_images)
    images = gpd.GeoDataFrame(image_columns, geometry=points, crs="EPSG:4326")
    return segments, images


def _burn() -> None:
    while True:
        pass


PROBE = """<script>
window.addEventListener("load", function () {
  console.log("BENCH load " + performance.now());
  requestAnimationFrame(function () { console.log("BENCH frame " + performance.now()); });
});
</script></body>"""


def probed_copy(page: Path, work: Path) -> Path:
    """The page with a script that logs, in ms since navigation start, its load event and the first frame after it."""
    text = page.read_text(encoding="utf-8")
    head, _, tail = text.rpartition("</body>")
    probed = work / f"probed-{page.name}"
    probed.write_text(head + PROBE + tail, encoding="utf-8")
    return probed


def chromium_open(page: Path, profile: Path, shot: Path) -> dict[str, float]:
    """One ``chromium --screenshot`` of the page: its load and first-frame times (ms) and the process's wall time (s)."""
    start = time.perf_counter()
    run = subprocess.run([CHROMIUM, *FLAGS, "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
                          f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=600, check=True)
    wall = time.perf_counter() - start
    found = dict((k, float(v)) for k, v in re.findall(r"BENCH (load|frame) ([0-9.]+)", run.stderr))
    if "frame" not in found and page.name.startswith("probed-"):
        raise SystemExit(f"{page}: no frame was drawn (console: {run.stderr[-2000:]})")
    return {"load_ms": found.get("load", float("nan")), "frame_ms": found.get("frame", float("nan")), "wall_s": wall}


def measure(page: Path, empty: Path, work: Path, repeats: int) -> dict[str, float]:
    runs, blank = [], []
    for r in range(repeats):
        runs.append(chromium_open(page, work / f"profile-{r}", work / "shot.png"))
        blank.append(chromium_open(empty, work / f"profile-{r}", work / "blank.png")["wall_s"])
    result = {key: statistics.median(run[key] for run in runs) for key in ("load_ms", "frame_ms", "wall_s")}
    return {**result, "frame_ms_max": max(run["frame_ms"] for run in runs), "startup_s": statistics.median(blank)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2, help="CPU-spinning processes for the loaded run (0: idle only)")
    parser.add_argument("--keep", type=Path, help="also copy map.html here")
    args = parser.parse_args()
    if CHROMIUM is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="city-audit-map-bench-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        segments, images = synthetic_run(args.segments, args.images)
        made = time.perf_counter() - start
        start = time.perf_counter()
        page = write_map_html(segments, images, work / "map.html", CLASSES, "weather", title="benchmark",
                              attribution=["images © Mapillary contributors, CC BY-SA 4.0", "roads © OpenStreetMap contributors"],
                              untrained=True)
        written = time.perf_counter() - start
        empty = work / "empty.html"
        empty.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
        if args.keep:
            shutil.copy(page, args.keep)
        size = page.stat().st_size
        print(f"{args.segments} segments, {args.images} images: synthetic run {made:.1f} s, write_map_html {written:.1f} s")
        print(f"map.html {size / 1e6:.1f} MB = {size / args.segments:.0f} bytes a segment (target < 50 MB: ratio {size / 50e6:.2f})")
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        page = probed_copy(page, work)
        rows = [("idle", measure(page, empty, work, args.repeats))]
        if args.burners:
            burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
            for b in burners:
                b.start()
            try:
                rows.append((f"{args.burners} CPU burners", measure(page, empty, work, args.repeats)))
            finally:
                for b in burners:
                    b.terminate()
                    b.join()
        print("| CPU | drawn: first frame after load, s median (max) | load event s | chromium --screenshot wall s | same, empty page | frame vs 10 s |")
        print("|---|---|---|---|---|---|")
        for name, m in rows:
            print(f"| {name} | {m['frame_ms'] / 1000:.2f} ({m['frame_ms_max'] / 1000:.2f}) | {m['load_ms'] / 1000:.2f} "
                  f"| {m['wall_s']:.2f} | {m['startup_s']:.2f} | {m['frame_ms'] / 10_000:.2f} |")


if __name__ == "__main__":
    main()
