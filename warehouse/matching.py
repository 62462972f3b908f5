"""Heading-aware image-to-segment matching in vectorised numpy: the warehouse's ``matches`` table.

It replaced ``sql/match_images.sql`` (kept as the reference the benchmark ``benchmarks/join.py``
compares with: identical segments and distances at 100k and 1M images) and computes its rule:
candidates are segments within ``max_distance_m`` (metric CRS); the chosen one has the lowest
``distance_m + heading_penalty_m * heading_difference_deg / 90`` where the heading difference is
taken against the segment's *local* bearing between the points ``bearing_window_m`` either side of
the nearest point, folded to 0..90 (NULL for panoramas, images without a heading and zero-length
segments); ties by distance, then segment_id.

How: points and segment vertices are projected once (pyproj, always_xy); segments become edges; each
edge is listed in every grid cell (``cell_m``, default ``max_distance_m / 2``) that its bounding box,
inflated by ``max_distance_m``, touches, so a point only looks at its own cell. Points are processed
in batches in cell order: candidate (point, edge) pairs from ``searchsorted`` on the cell keys,
point-to-edge distances in plain arithmetic, reduced to (point, segment) minima, contenders kept
(within the penalty of the nearest; only the nearest without a heading), local bearings interpolated
along the vertices, and the winner by score, distance, segment rank with ``reduceat``.
Batches run in a thread pool of ``threads`` (default ``default_threads()``: min(2, CPUs)), results
concatenated in point order, so the rows do not depend on the thread count. Grid cells are kept for
an edge only where the cell's centre lies within ``max_distance_m`` + half the cell diagonal of it
(about 10 % fewer candidate pairs than the whole inflated box). The arithmetic follows DuckDB
spatial's to the bit (closest point ``a + r (b - a)``, interpolation walking the edges, lengths summed
edge by edge), so ties break as in the SQL.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from warehouse.db import sql

__all__ = ["match_arrays", "match_connection"]

NEAR_TIE_M = 1e-6
_ATAN2 = np.frompyfunc(math.atan2, 2, 1)


def default_threads() -> int:
    """Threads for the matcher: 2 where the machine has them (the goal's 2 cores), else 1."""
    return max(1, min(2, os.cpu_count() or 1))


def _segments(coords: np.ndarray, offsets: np.ndarray):
    """Edges (first-vertex index, segment) and per-vertex cumulative length along its segment."""
    n_vertices = len(coords)
    seg_of_vertex = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    is_edge = np.ones(n_vertices, dtype=bool)
    is_edge[offsets[1:] - 1] = False  # the last vertex of each segment starts no edge
    first = np.flatnonzero(is_edge)
    dx = coords[first + 1, 0] - coords[first, 0]
    dy = coords[first + 1, 1] - coords[first, 1]
    length = np.sqrt(dx * dx + dy * dy)
    step = np.zeros(n_vertices)
    step[first + 1] = length
    total = np.cumsum(step)  # global, only to search in
    base = np.zeros(len(offsets) - 1)
    nonempty = np.diff(offsets) > 0
    base[nonempty] = total[offsets[:-1][nonempty]]
    # local cumulative length per vertex, summed within its segment (not total - base: the same
    # geometry must give the same bits wherever its segment lies in the arrays)
    cum = np.zeros(n_vertices)
    position = np.arange(n_vertices, dtype=np.int64) - offsets[:-1][seg_of_vertex]
    by_position = np.argsort(position, kind="stable")
    bounds = np.cumsum(np.bincount(position)) if n_vertices else np.zeros(0, np.int64)
    for k in range(1, len(bounds)):
        at = by_position[bounds[k - 1]:bounds[k]]
        cum[at] = cum[at - 1] + step[at]
    seg_length = np.zeros(len(offsets) - 1)
    seg_length[nonempty] = cum[offsets[1:][nonempty] - 1]
    return first, seg_of_vertex[first], dx, dy, length, cum, total, base, seg_length


def match_arrays(px: np.ndarray, py: np.ndarray, heading: np.ndarray, coords: np.ndarray, offsets: np.ndarray,
                 seg_rank: np.ndarray, max_distance_m: float, heading_penalty_m: float, bearing_window_m: float,
                 cell_m: float | None = None, batch: int = 8192, threads: int | None = None):
    """Match metric points to metric polylines; returns (point index, segment index, distance_m, heading_difference_deg).

    ``heading``: degrees, NaN where an image has none (panorama, no compass angle). ``coords``: (n, 2)
    vertices of all segments, ``offsets``: segment k is ``coords[offsets[k]:offsets[k+1]]``.
    ``seg_rank``: the tie-break order of the segments (their distinct ranks by segment_id). Rows in point order.
    """
    px, py = np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)
    seg_rank = np.asarray(seg_rank, dtype=np.int64)
    heading = np.asarray(heading, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    offsets = np.asarray(offsets, dtype=np.int64)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0))
    if len(px) == 0 or len(coords) == 0:
        return empty
    threads = default_threads() if threads is None else max(1, int(threads))
    D = float(max_distance_m)
    cell = float(cell_m or D / 2) or 1.0
    first, eseg, edx, edy, elen, cum, total, base, seg_length = _segments(coords, offsets)
    if len(first) == 0:
        return empty
    ax, ay = coords[first, 0], coords[first, 1]
    bx, by = coords[first + 1, 0], coords[first + 1, 1]
    len2 = edx * edx + edy * edy
    len2[len2 == 0] = 1.0  # a zero-length edge has r = 0 / 1: the distance to its point
    ecum = cum[first]

    # grid: every edge in each cell its bbox inflated by D touches
    ox, oy = coords[:, 0].min() - D - cell, coords[:, 1].min() - D - cell
    ix0 = np.floor((np.minimum(ax, ax + edx) - D - ox) / cell).astype(np.int64)
    ix1 = np.floor((np.maximum(ax, ax + edx) + D - ox) / cell).astype(np.int64)
    iy0 = np.floor((np.minimum(ay, ay + edy) - D - oy) / cell).astype(np.int64)
    iy1 = np.floor((np.maximum(ay, ay + edy) + D - oy) / cell).astype(np.int64)
    width = int(ix1.max()) + 2
    height = int(iy1.max()) + 2
    nx, ny = ix1 - ix0 + 1, iy1 - iy0 + 1
    per_edge = nx * ny
    entry_edge = np.repeat(np.arange(len(first), dtype=np.int64), per_edge)
    k = np.arange(len(entry_edge), dtype=np.int64) - np.repeat(np.cumsum(per_edge) - per_edge, per_edge)
    nxr = nx[entry_edge]
    gy, gx = iy0[entry_edge] + k // nxr, ix0[entry_edge] + k % nxr
    del k, nxr
    # keep only cells whose centre lies within D + half the cell's diagonal of the edge: any point of
    # the cell within D of the edge is (triangle inequality). On join.py's 1M / 100k data it drops 13 %
    # of the grid entries and 10.5 % of the candidate pairs (benchmarks/README.md). Only a superset of
    # the true candidates is needed, so a margin of a millimetre covers this test's own rounding.
    reach = D + cell * math.sqrt(0.5) + 1e-3
    keep = np.empty(len(entry_edge), dtype=bool)
    chunk = 1 << 20
    for at in range(0, len(entry_edge), chunk):
        e = entry_edge[at:at + chunk]
        qx = ox + (gx[at:at + chunk] + 0.5) * cell - ax[e]
        qy = oy + (gy[at:at + chunk] + 0.5) * cell - ay[e]
        ex, ey = edx[e], edy[e]
        r = np.clip((qx * ex + qy * ey) / len2[e], 0.0, 1.0)
        qx -= r * ex
        qy -= r * ey
        keep[at:at + chunk] = qx * qx + qy * qy <= reach * reach
    entry_edge, keys = entry_edge[keep], gy[keep] * width + gx[keep]
    del gx, gy, keep
    n_edges = len(first)
    order = np.sort(keys * n_edges + entry_edge)  # by cell, then edge (so a segment's edges stay together)
    entry_edge = order % n_edges
    keys = order // n_edges
    del order

    # points, in cell order
    cx = np.floor((px - ox) / cell)
    cy = np.floor((py - oy) / cell)
    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height) & np.isfinite(px) & np.isfinite(py)
    pkey = np.where(inside, np.where(inside, cy, 0).astype(np.int64) * width + np.where(inside, cx, 0).astype(np.int64), -1)
    porder = np.argsort(pkey, kind="stable")
    porder = porder[pkey[porder] >= 0]
    lo_all = np.searchsorted(keys, pkey[porder], "left")
    hi_all = np.searchsorted(keys, pkey[porder], "right")

    has_heading = np.isfinite(heading)
    D2 = D * D * (1 + 1e-9)
    window = float(bearing_window_m)
    penalty = float(heading_penalty_m)
    last_vertex = np.zeros(len(offsets) - 1, dtype=np.int64)
    last_vertex[:] = offsets[1:] - 1

    def one_batch(start):
        pts = porder[start:start + batch]
        lo, hi = lo_all[start:start + batch], hi_all[start:start + batch]
        counts = hi - lo
        n_pairs = int(counts.sum())
        if n_pairs == 0:
            return None
        pp = np.repeat(pts, counts)
        ends = np.cumsum(counts)
        ee = entry_edge[np.arange(n_pairs, dtype=np.int64) - np.repeat(ends - counts - lo, counts)]
        # DuckDB's arithmetic, to the bit: the closest point a + r (b - a), or a end point when r is outside 0..1
        qx, qy = px[pp], py[pp]
        aex, aey = ax[ee], ay[ee]
        dxe, dye = edx[ee], edy[ee]
        r = ((qx - aex) * dxe + (qy - aey) * dye) / len2[ee]
        np.minimum(np.maximum(r, 0.0, out=r), 1.0, out=r)
        wx = aex + r * dxe
        np.subtract(qx, wx, out=wx)
        wy = aey + r * dye
        np.subtract(qy, wy, out=wy)
        end = np.flatnonzero(r >= 1)
        end_edge = ee[end]
        wx[end] = qx[end] - bx[end_edge]
        wy[end] = qy[end] - by[end_edge]
        wx *= wx
        wy *= wy
        d2 = np.add(wx, wy, out=wx)
        del qx, qy, aex, aey, dxe, dye, wy
        near = np.flatnonzero(d2 <= D2)
        if len(near) == 0:
            return None
        pp, ee, r = pp[near], ee[near], r[near]
        d = np.sqrt(d2[near])
        keep = d <= D
        pp, ee, r, d = pp[keep], ee[keep], r[keep], d[keep]
        if len(pp) == 0:
            return None
        ss = eseg[ee]
        # (point, segment) groups are contiguous: pairs come per point, a cell's edges in edge order
        boundary = np.empty(len(pp), dtype=bool)
        boundary[0] = True
        np.not_equal(pp[1:], pp[:-1], out=boundary[1:])
        boundary[1:] |= ss[1:] != ss[:-1]
        gstart = np.flatnonzero(boundary)
        gid = np.cumsum(boundary) - 1
        gmin = np.minimum.reduceat(d, gstart)
        at_min = np.flatnonzero(d == gmin[gid])
        first_at = at_min[np.r_[True, gid[at_min][1:] != gid[at_min][:-1]]]  # first edge reaching the minimum
        gp, gs, gd, ge, gr = pp[first_at], ss[first_at], d[first_at], ee[first_at], r[first_at]
        # contenders: within the penalty of the nearest (only the nearest without a heading)
        pb = np.r_[True, gp[1:] != gp[:-1]]
        pstart = np.flatnonzero(pb)
        nearest = np.minimum.reduceat(gd, pstart)[np.cumsum(pb) - 1]
        hh = heading[gp]
        with_heading = has_heading[gp]
        keep = gd <= nearest + np.where(with_heading, penalty, 0.0)
        gp, gs, gd, ge, gr, hh, with_heading = gp[keep], gs[keep], gd[keep], ge[keep], gr[keep], hh[keep], with_heading[keep]
        length = seg_length[gs]
        diff = np.full(len(gp), np.nan)
        need = np.flatnonzero(with_heading & (length > 0))
        if len(need):
            s, L = gs[need], length[need]
            e = ge[need]
            start_m, edge_m = ecum[e], elen[e]
            at_fraction = (start_m + gr[need] * edge_m) / L
            w = window / L
            lo_m = np.maximum(at_fraction - w, 0.0) * L
            hi_m = np.minimum(at_fraction + w, 1.0) * L
            # DuckDB's ST_LineInterpolatePoint walks the edges to the first whose end reaches the target
            # length, then a + t (b - a) with t = (target - start) / edge length. Where both window
            # ends lie on the nearest edge (the common case) that edge is known without a search.
            end_m = cum[first[e] + 1]
            on_edge = ((start_m < lo_m) | (first[e] == offsets[s])) & (hi_m <= end_m) & (edge_m > 0)
            before_x, before_y = _on_edge(lo_m, e, start_m, edge_m, ax, ay, edx, edy)
            after_x, after_y = _on_edge(hi_m, e, start_m, edge_m, ax, ay, edx, edy)
            bent = np.flatnonzero(~on_edge)
            if len(bent):
                sb = s[bent]
                before_x[bent], before_y[bent] = _interpolate(lo_m[bent], sb, coords, cum, total, base, offsets, last_vertex)
                after_x[bent], after_y[bent] = _interpolate(hi_m[bent], sb, coords, cum, total, base, offsets, last_vertex)
            vx, vy = after_x - before_x, after_y - before_y
            bearing = (np.degrees(np.arctan2(vx, vy)) + 360) % 360
            diff[need] = 90 - np.abs(90 - np.abs(hh[need] - bearing) % 180)
        score = gd + np.where(np.isnan(diff), 0.0, penalty * diff / 90)
        # the winner per point (contenders of a point are contiguous): lowest score, then distance, then rank
        pb = np.r_[True, gp[1:] != gp[:-1]]
        pstart = np.flatnonzero(pb)
        pid = np.cumsum(pb) - 1
        if len(need):
            # numpy's vectorised arctan2 can differ from libm's (DuckDB's) in the last bit; where a point has
            # contenders within NEAR_TIE_M of its best score, their bearings are redone with math.atan2 so
            # that near-ties break exactly as in SQL
            close = score <= np.minimum.reduceat(score, pstart)[pid] + NEAR_TIE_M
            tied = (np.add.reduceat(close, pstart) > 1)[pid]
            redo = np.flatnonzero(tied[need])
            if len(redo):
                bearing = (np.degrees(_ATAN2(vx[redo], vy[redo]).astype(np.float64)) + 360) % 360
                at = need[redo]
                diff[at] = 90 - np.abs(90 - np.abs(hh[at] - bearing) % 180)
                score[at] = gd[at] + penalty * diff[at] / 90
        best = score == np.minimum.reduceat(score, pstart)[pid]
        dd = np.where(best, gd, np.inf)
        best &= dd == np.minimum.reduceat(dd, pstart)[pid]
        rr = np.where(best, seg_rank[gs], np.iinfo(np.int64).max)
        best &= rr == np.minimum.reduceat(rr, pstart)[pid]
        win = np.flatnonzero(best)
        return gp[win], gs[win], gd[win], diff[win]

    starts = range(0, len(porder), batch)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in its array loops
            results = [r for r in pool.map(one_batch, starts) if r is not None]
    else:
        results = [r for r in map(one_batch, starts) if r is not None]
    if not results:
        return empty
    p = np.concatenate([r[0] for r in results])
    back = np.argsort(p, kind="stable")
    return tuple(np.concatenate([r[k] for r in results])[back] for k in range(4))


def _on_edge(at_m, e, start_m, edge_m, ax, ay, edx, edy):
    t = (at_m - start_m) / edge_m
    return ax[e] + t * edx[e], ay[e] + t * edy[e]


def _interpolate(at_m, seg, coords, cum, total, base, offsets, last_vertex):
    """Points ``at_m`` metres along segments ``seg``, with DuckDB's arithmetic: the first edge whose
    end is at or past ``at_m``, ``a + t (b - a)``, ``t = (at_m - start) / edge length``; past the end
    (rounding), the last vertex."""
    lo, hi = offsets[seg], last_vertex[seg] - 1
    j = np.clip(np.searchsorted(total, base[seg] + at_m, "left") - 1, lo, hi)
    for _ in range(2):  # settle on the local lengths (the global search can be a vertex off by rounding)
        j = np.where((j < hi) & (cum[j + 1] < at_m), j + 1, j)
        j = np.where((j > lo) & (cum[j] >= at_m), j - 1, j)
    ex, ey = coords[j + 1, 0] - coords[j, 0], coords[j + 1, 1] - coords[j, 1]
    step = np.sqrt(ex * ex + ey * ey)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(step > 0, (at_m - cum[j]) / step, 0.0)
    x = coords[j, 0] + t * ex
    y = coords[j, 1] + t * ey
    past = cum[j + 1] < at_m
    x[past], y[past] = coords[j[past] + 1, 0], coords[j[past] + 1, 1]
    return x, y


def match_connection(con, metric_crs: str, max_distance_m: float, heading_penalty_m: float, bearing_window_m: float,
                     threads: int | None = None) -> int:
    """Match the connection's ``images`` to its ``segments`` (lon/lat) and insert the rows into ``matches``.

    Reads both tables out of DuckDB as Arrow, projects with pyproj (always_xy, bit-identical to
    DuckDB's ``ST_Transform`` here), matches with ``match_arrays`` and inserts through a registered
    Arrow table. Segments are numbered in ``segment_id`` order for the last tie-break. Returns the
    number of matched images.
    """
    import pyarrow as pa
    import shapely
    from pyproj import Transformer

    images = con.execute(sql("matching_images")).to_arrow_table()
    segments = con.execute(sql("matching_segments")).to_arrow_table()
    to_m = Transformer.from_crs("EPSG:4326", metric_crs, always_xy=True)
    lon = images["lon"].to_numpy(zero_copy_only=False)
    lat = images["lat"].to_numpy(zero_copy_only=False)
    px, py = to_m.transform(lon, lat)
    heading = images["heading_deg"].to_numpy(zero_copy_only=False).astype(np.float64)
    lines = shapely.from_wkb(segments["wkb"].to_numpy(zero_copy_only=False))
    not_lines = int((shapely.get_type_id(lines) != shapely.GeometryType.LINESTRING).sum())
    if not_lines:
        raise ValueError(f"segments must be LINESTRINGs; {not_lines} of {len(lines)} are not")
    coords, index = shapely.get_coordinates(lines, return_index=True)
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=len(lines)), out=offsets[1:])
    mx, my = to_m.transform(coords[:, 0], coords[:, 1])
    p, s, d, h = match_arrays(np.asarray(px), np.asarray(py), heading, np.column_stack([mx, my]), offsets,
                              np.arange(len(lines)), max_distance_m, heading_penalty_m, bearing_window_m, threads=threads)
    rows = pa.table({"image_id": images["image_id"].take(pa.array(p)),
                     "segment_id": segments["segment_id"].take(pa.array(s)),
                     "distance_m": pa.array(d, type=pa.float64()),
                     "heading_difference_deg": pa.array(h, type=pa.float64(), mask=np.isnan(h))})
    con.register("_numpy_matches", rows)
    try:
        con.execute(sql("insert_matches"))
    finally:
        con.unregister("_numpy_matches")
    return len(p)
