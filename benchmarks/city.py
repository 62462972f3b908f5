"""City-scale benchmark: a synthetic city of N images on real road geometry, through every stage of a run.

    PYTHONPATH=. python benchmarks/city.py                      # 2,000 and 20,000 images (about 8 min, 2 CPUs)
    PYTHONPATH=. python benchmarks/city.py --images 100000      # 10,000 and 100,000 (the issue's sizes)
    PYTHONPATH=. python benchmarks/city.py --images 1000000     # 100,000 and 1,000,000
    PYTHONPATH=. python benchmarks/city.py collect --images 5000   # local collection only, per image ms

**city** (default). The roads are the bundled sample's real OSM edges around Stuttgart-West,
repeated on a ``--grid`` x ``--grid`` grid of shifted copies (default 7 x 7: 9,310 segments, a
city of about 80 km²) and read as a GeoParquet road file. Images are placed along them:
a segment by length, a point along it, up to 8 m off the line, a heading along the road (either
way, +-10°), a capture time in 2022-2024. Their files are small real JPEGs (the 19 sample
images at 128 x 64, each image its own file) in a local folder. The backbone is the ``tiny``
one, and every image's features are already in the feature cache (``classify.features``,
filled once from the 19 distinct pictures), so classification measures the pipeline (hashing,
cache reads, the heads, the predictions table) and not the image tower. Each size runs in a
fresh process that calls the functions the flow's stages call, in order, without Prefect:
collection from the folder (read in place), roads, classification, the database build,
publishing (GeoParquet, GeoPackage, raster, map.png, map.html, report) and the run's end
(``run.json``, swap). Printed per size and stage: seconds, images/s and the peak RSS during the
stage (sampled every 20 ms), then the ratio large/small of each (goal: time x10 for 10x the
images, memory x1).

**collect**. ``--images`` real-size JPEGs (the sample's 1024 x 512 Mapillary pictures, each file
made distinct by a JPEG comment) in a folder, collected by ``geo.imagery.collect_images``: in
place and with ``--copy-images``, each in a fresh process, printed as ms per image. Run it with
``PYTHONPATH`` at an older checkout to measure that one (it then collects the old way only).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # benchmarks/classify.py would shadow the classify package
SAMPLE = REPO / "geo" / "sample_area" / "stuttgart"
STAGES = ("collect", "roads", "load backbone", "classify", "build database", "publish", "finish run")


# peak memory per stage --------------------------------------------------------------------------------
class RssSampler:
    """The process's resident set size, sampled every ``interval_s`` in a thread; ``peak()`` since ``reset()``."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s, self._peak, self._stop = interval_s, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        threading.Thread(target=self._run, daemon=True).start()

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self.rss())

    def reset(self) -> None:
        self._peak = self.rss()

    def peak(self) -> int:
        return max(self._peak, self.rss())


@contextmanager
def measured(name: str, results: dict, sampler: RssSampler):
    sampler.reset()
    start = time.perf_counter()
    yield
    results[name] = {"s": time.perf_counter() - start, "peak_rss_mb": sampler.peak() / 2**20}


# the synthetic city ---------------------------------------------------------------------------------------
def city_roads(work: Path, grid: int) -> tuple[Path, list[float]]:
    """The sample roads repeated on a ``grid`` x ``grid`` grid, as GeoParquet; its path and bbox."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    path = work / f"roads-{grid}x{grid}.parquet"
    roads = gpd.read_parquet(SAMPLE / "roads.parquet").to_crs("EPSG:4326")
    west, south, east, north = roads.total_bounds
    dx, dy = (east - west) * 1.02, (north - south) * 1.02
    parts = []
    for i in range(grid):
        for j in range(grid):
            part = roads.copy()
            part["geometry"] = shapely.transform(roads.geometry.to_numpy(), lambda xy, i=i, j=j: xy + [i * dx, j * dy])
            part["segment_id"] = f"c{i}-{j}:" + roads["segment_id"].astype(str)
            parts.append(part)
    city = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326")
    if not path.is_file():
        city.to_parquet(path)
    w, s, e, n = city.total_bounds
    return path, [float(w) - 0.001, float(s) - 0.001, float(e) + 0.001, float(n) + 0.001]


def small_jpegs(work: Path) -> list[bytes]:
    """The 19 sample pictures as 128 x 64 JPEGs (quality 85)."""
    import io

    from PIL import Image

    out = []
    for file in sorted((SAMPLE / "images").glob("*.jpg")):
        with Image.open(file) as im:
            buffer = io.BytesIO()
            im.convert("RGB").resize((128, 64)).save(buffer, "JPEG", quality=85)
            out.append(buffer.getvalue())
    return out


def city_folder(work: Path, n: int, roads_file: Path, seed: int = 0) -> Path:
    """A folder of ``n`` images along the roads (files and ``images.parquet``), made once per size."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely

    folder = work / f"city-{n}"
    if (folder / "images.parquet").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    roads = gpd.read_parquet(roads_file)
    metric = roads.to_crs(roads.estimate_utm_crs())
    lengths = metric.length.to_numpy()
    pick = rng.choice(len(roads), size=n, p=lengths / lengths.sum())
    t = rng.uniform(0.02, 0.98, n)
    lines = metric.geometry.to_numpy()[pick]
    at = shapely.line_interpolate_point(lines, t, normalized=True)
    ahead = shapely.line_interpolate_point(lines, np.minimum(t + 0.01, 1.0), normalized=True)
    behind = shapely.line_interpolate_point(lines, np.maximum(t - 0.01, 0.0), normalized=True)
    dxy = shapely.get_coordinates(ahead) - shapely.get_coordinates(behind)
    bearing = np.degrees(np.arctan2(dxy[:, 0], dxy[:, 1]))
    heading = (bearing + np.where(rng.random(n) < 0.5, 0, 180) + rng.normal(0, 10, n)) % 360
    offset = rng.uniform(-8, 8, n)
    normal = np.radians(bearing + 90)
    xy = shapely.get_coordinates(at) + np.c_[offset * np.sin(normal), offset * np.cos(normal)]
    lonlat = gpd.GeoSeries(shapely.points(xy), crs=metric.crs).to_crs("EPSG:4326")
    pictures = small_jpegs(work)
    (folder / "img").mkdir(parents=True)
    ids = [f"{k:08d}" for k in range(n)]
    for k, image_id in enumerate(ids):
        sub = folder / "img" / image_id[:4]
        if k % 10_000 == 0:
            sub.mkdir(exist_ok=True)
        (sub / f"{image_id}.jpg").write_bytes(pictures[k % len(pictures)])
    start = pd.Timestamp("2022-01-01", tz="UTC")
    frame = pd.DataFrame({
        "image_id": ids, "lon": lonlat.x.to_numpy(), "lat": lonlat.y.to_numpy(),
        "path": [f"img/{i[:4]}/{i}.jpg" for i in ids], "compass_angle": heading, "is_pano": False,
        "sequence_id": [f"seq{p}" for p in pick],
        "captured_at": start + pd.to_timedelta(rng.integers(0, 3 * 365 * 86400, n), unit="s"),
    })
    frame.to_parquet(folder / "images.parquet")
    return folder


def fill_feature_cache(root: Path, backbone) -> None:
    """Features of the 19 distinct pictures (real ``tiny`` outputs) under their content keys."""
    from classify.features import FeatureCache, encode_files

    pictures = root / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    files = []
    for k, data in enumerate(small_jpegs(root)):
        (pictures / f"{k}.jpg").write_bytes(data)
        files.append(str(pictures / f"{k}.jpg"))
    encode_files(files, [Path(f).stem for f in files], backbone, cache=FeatureCache(root / "features", backbone),
                 progress=False)


def one_size(n: int, work: Path, grid: int) -> dict:
    """Every stage for one city of ``n`` images, in this process; per-stage seconds and peak RSS."""
    import pandas as pd

    from classify.backbone import load_backbone
    from classify.schema import ATTRIBUTES
    from classify.stage import classify_image_store
    from contracts.results import RunFolder
    from contracts.tables import failures_frame
    from geo.bbox import parse_bbox
    from geo.imagery import make_source
    from geo.roads import load_road_segments
    from warehouse.publish import publish_run
    from warehouse.runs import build_run_database, finish_run

    roads_file, bbox_values = city_roads(work, grid)
    folder = city_folder(work, n, roads_file)
    bbox = parse_bbox(bbox_values)
    out = work / f"out-{n}"
    shutil.rmtree(out, ignore_errors=True)
    run = RunFolder(out, f"bench-{n}")
    results: dict = {}
    sampler = RssSampler()
    with measured("collect", results, sampler):  # the calls of flows.collect.collect_by_unit, without Prefect
        source = make_source("folder", folder)
        source.prepare(run.store)
        found = source.discover_unit("area", bbox)
        selected, not_selected = source.select_counted([found.records], bbox)
        part = source.collect_unit(selected, run.store, None, "area")
        collection = source.finish([found], [], selected, not_selected, part, units=1)
        collection = collection.on_disk(run.work / "images.parquet")  # as flows.stages.collect_images
        del found, selected, part
    with measured("roads", results, sampler):
        segments = load_road_segments(bbox, str(roads_file))
    with measured("load backbone", results, sampler):
        backbone = load_backbone("tiny", device="cpu")
        fill_feature_cache(work / "cache", backbone)  # 19 pictures; a no-op once filled
    with measured("classify", results, sampler):
        classified = classify_image_store(collection.image_frame(["image_id", "path", "sha256"]), run.store,
                                          backbone=backbone, cache_dir=run.work,
                                          feature_cache=work / "cache" / "features", progress=False)
    parts = [f for f in (collection.failures, classified.failures()) if len(f)]
    failures = pd.concat(parts, ignore_index=True) if parts else failures_frame()
    run.staging.mkdir(parents=True)
    with measured("build database", results, sampler):
        counts = build_run_database(run, images=collection.image_source(), segments=segments,
                                    predictions=classified.prediction_files, failures=failures,
                                    metric_crs=bbox.utm_crs(), max_distance_m=25.0, heading_penalty_m=15.0,
                                    slice_by_year=False)
    with measured("publish", results, sampler):
        credits = [source.attribution, "roads © OpenStreetMap contributors, ODbL"]
        published = publish_run(run.database, run.staging, {a: s.classes for a, s in ATTRIBUTES.items()},
                                metric_crs=bbox.utm_crs(), run_id=run.run_id, model_trained=False,
                                attribution=credits, image_store=run.store)
    with measured("finish run", results, sampler):
        summary = finish_run(run, parameters={"benchmark": "city", "images": n}, model=classified.model,
                             adaptation=None, counts=counts, failures=failures, predictions_reused=0,
                             outputs=published, timings_s={k: v["s"] for k, v in results.items()},
                             credits=credits, ingest=collection.counts)
    return {"images": n, "collected": collection.image_count, "segments": summary["segments"],
            "matched": summary["matched_images"], "predictions": summary["predictions"], "stages": results}


def run_city(args) -> None:
    sizes = [max(1, args.images // 10), args.images]
    work = Path(args.work or tempfile.mkdtemp(prefix="city-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"city benchmark in {work}: sizes {sizes}, {args.grid}x{args.grid} copies of the sample roads, "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    for n in sizes:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "_one", "--images", str(n), "--work", str(work),
                               "--grid", str(args.grid)], capture_output=True, text=True, env=_env())
        if done.returncode:
            sys.exit(f"size {n} failed:\n{done.stderr[-4000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {n:,} images: {time.perf_counter() - start:.0f} s with the set-up", flush=True)
        rows.append(row)
    small, large = rows
    print(f"\n{large['segments']:,} segments; matched {small['matched']:,} / {large['matched']:,} images; "
          f"{small['predictions']:,} / {large['predictions']:,} prediction rows")
    header = f"{'stage':<16}" + "".join(f"{format(r['images'], ',') + ' s':>12}{'img/s':>10}{'RSS MB':>9}"
                                        for r in rows)
    print(header + f"{'time x':>9}{'RSS x':>8}")
    for stage in [*STAGES, "total"]:
        cells, values = "", []
        for r in rows:
            if stage == "total":
                s = sum(v["s"] for v in r["stages"].values())
                rss = max(v["peak_rss_mb"] for v in r["stages"].values())
            else:
                s, rss = r["stages"][stage]["s"], r["stages"][stage]["peak_rss_mb"]
            values.append((s, rss))
            cells += f"{s:>12.2f}{r['images'] / s if s else math.inf:>10,.0f}{rss:>9.0f}"
        print(f"{stage:<16}{cells}{values[1][0] / values[0][0]:>9.1f}{values[1][1] / values[0][1]:>8.2f}")
    print(f"\n(10x the images: time x10 is linear, RSS x1 is flat)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


# local collection only -----------------------------------------------------------------------------------
def collect_folder(work: Path, n: int) -> Path:
    """``n`` real-size JPEGs (the sample's, each made distinct by a comment segment) and their images.parquet."""
    import pandas as pd

    folder = work / f"collect-{n}"
    if (folder / "images.parquet").is_file():
        return folder
    meta = pd.read_parquet(SAMPLE / "images.parquet")
    pictures = [(SAMPLE / p).read_bytes() for p in meta["path"]]
    (folder / "img").mkdir(parents=True)
    rows = []
    for k in range(n):
        data = pictures[k % len(pictures)]
        comment = f"city-audit benchmark copy {k}".encode()
        (folder / "img" / f"{k:07d}.jpg").write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big")
                                                      + comment + data[2:])
        base = meta.iloc[k % len(meta)]
        rows.append({"image_id": f"{k:07d}", "lon": base.lon, "lat": base.lat, "path": f"img/{k:07d}.jpg",
                     "compass_angle": base.compass_angle, "captured_at": base.captured_at})
    pd.DataFrame(rows).to_parquet(folder / "images.parquet")
    return folder


def one_collection(n: int, work: Path, mode: str) -> dict:
    """Collect the folder of ``n`` images once (``mode``: in-place, copy, or the old code's only way)."""
    from geo.bbox import parse_bbox
    from geo.imagery import collect_images, make_source

    folder = collect_folder(work, n)
    store = work / f"store-{mode}"
    shutil.rmtree(store, ignore_errors=True)
    if mode == "parts":
        return collection_parts(folder)
    has_copy = "copy_images" in inspect.signature(make_source).parameters
    if has_copy == (mode == "legacy"):
        return {"mode": mode, "skipped": "not a mode of this checkout"}
    kwargs = {"copy_images": mode == "copy"} if has_copy else {}
    start, cpu = time.perf_counter(), time.process_time()
    result = collect_images(make_source("folder", folder, **kwargs), parse_bbox("9.16,48.76,9.18,48.78"), store,
                            progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    copied = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) if store.exists() else 0
    shutil.rmtree(store, ignore_errors=True)
    return {"mode": mode, "images": len(result.images), "wall_s": wall, "cpu_s": cpu,
            "ms_per_image": 1000 * wall / n, "copied_mb": copied / 2**20}


def collection_parts(folder: Path, limit: int = 2000) -> dict:
    """Where in-place collection's time goes, per image (ms), over up to ``limit`` files: reading the bytes, their
    sha256, the draft decode (``geo.imagery.image_size``), and a full decode for comparison."""
    import hashlib
    import io

    from PIL import Image

    from geo.imagery import image_size

    files = sorted((folder / "img").glob("*.jpg"))[:limit]
    timing = {}
    start = time.perf_counter()
    blobs = [f.read_bytes() for f in files]
    timing["read"] = time.perf_counter() - start
    start = time.perf_counter()
    for data in blobs:
        hashlib.sha256(data).hexdigest()
    timing["sha256"] = time.perf_counter() - start
    start = time.perf_counter()
    for data in blobs:
        image_size(data)
    timing["draft decode"] = time.perf_counter() - start
    start = time.perf_counter()
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    timing["full decode"] = time.perf_counter() - start
    return {"mode": "parts", "files": len(files), **{k: 1000 * v / len(files) for k, v in timing.items()}}


def run_collect(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="collect-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    collect_folder(work, args.images)
    data_mb = sum(f.stat().st_size for f in (work / f"collect-{args.images}").rglob("*.jpg")) / 2**20
    code = subprocess.run([sys.executable, "-c", "import geo.imagery; print(geo.imagery.__file__)"],
                          capture_output=True, text=True, env=_env(), cwd="/").stdout.strip()
    print(f"collecting {args.images:,} real-size JPEGs ({data_mb:,.0f} MB) from {work}, code {code}", flush=True)
    results = {}
    for mode in ("legacy", "in-place", "copy", "in-place"):
        done = subprocess.run([sys.executable, __file__, "_collect", "--images", str(args.images), "--work", str(work),
                               "--mode", mode], capture_output=True, text=True, env=_env())
        if done.returncode:
            sys.exit(f"{mode} failed:\n{done.stderr[-4000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        if "skipped" in row:
            continue
        results.setdefault(mode, []).append(row)
        print(f"  {mode:<9} {row['images']:,} images  {row['wall_s']:7.1f} s wall  {row['cpu_s']:7.1f} s CPU  "
              f"{row['ms_per_image']:6.2f} ms/image  {row['copied_mb']:7.0f} MB written", flush=True)
    if "in-place" in results:
        done = subprocess.run([sys.executable, __file__, "_collect", "--images", str(args.images), "--work", str(work),
                               "--mode", "parts"], capture_output=True, text=True, env=_env())
        parts = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  per image over {parts['files']:,} warm files: " + ", ".join(
            f"{k} {parts[k]:.2f} ms" for k in ("read", "sha256", "draft decode", "full decode")))
    if "in-place" in results and "copy" in results:
        best = min(r["ms_per_image"] for r in results["in-place"])
        print(f"copy / in place: {results['copy'][0]['ms_per_image'] / best:.2f}x per image")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="city", choices=["city", "collect", "_one", "_collect"])
    parser.add_argument("--images", type=int, default=None,
                        help="city: the larger size (default 20000, so that a run fits in about 10 minutes on 2 "
                             "CPUs; the smaller is a tenth); collect: the folder's image count (default 5000)")
    parser.add_argument("--grid", type=int, default=7, help="city: copies of the sample roads per side (default 7)")
    parser.add_argument("--work", help="working folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--mode", default="in-place")
    args = parser.parse_args()
    if args.images is None:
        args.images = 5000 if args.what in ("collect", "_collect") else 20_000
    if args.what == "_one":
        print(json.dumps(one_size(args.images, Path(args.work), args.grid)))
    elif args.what == "_collect":
        print(json.dumps(one_collection(args.images, Path(args.work), args.mode)))
    elif args.what == "collect":
        run_collect(args)
    else:
        run_city(args)


if __name__ == "__main__":
    main()
