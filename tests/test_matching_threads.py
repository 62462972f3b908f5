"""warehouse.matching: the rows do not depend on the thread count or the batch size, and the grid's
cell pruning drops no candidate (checked against a brute-force nearest distance)."""

from __future__ import annotations

import numpy as np

from warehouse.matching import default_threads, match_arrays


def _scene(seed: int = 7, n_points: int = 4000, n_segments: int = 300):
    rng = np.random.default_rng(seed)
    starts = rng.uniform(0, 1000, (n_segments, 2))
    n_vertices = rng.integers(2, 5, n_segments)
    parts = [s + np.cumsum(np.vstack([[0, 0], rng.normal(0, 30, (k - 1, 2))]), axis=0) for s, k in zip(starts, n_vertices)]
    coords = np.vstack(parts)
    offsets = np.r_[0, np.cumsum(n_vertices)]
    px, py = rng.uniform(-30, 1030, n_points), rng.uniform(-30, 1030, n_points)
    heading = np.where(rng.random(n_points) < 0.3, np.nan, rng.uniform(0, 360, n_points))
    return px, py, heading, coords, offsets


def test_rows_do_not_depend_on_threads_or_batch():
    px, py, heading, coords, offsets = _scene()
    rank = np.arange(len(offsets) - 1)
    one = match_arrays(px, py, heading, coords, offsets, rank, 25.0, 15.0, 10.0, threads=1)
    assert len(one[0]) > 1000
    for threads, batch in ((2, 64), (3, 333), (1, 97)):
        other = match_arrays(px, py, heading, coords, offsets, rank, 25.0, 15.0, 10.0, threads=threads, batch=batch)
        for a, b in zip(one, other):
            assert np.array_equal(a, b, equal_nan=True)
    assert 1 <= default_threads() <= 2


def test_matched_images_are_those_with_a_segment_in_reach():
    px, py, heading, coords, offsets = _scene(seed=11)
    p, s, d, _ = match_arrays(px, py, np.full(len(px), np.nan), coords, offsets, np.arange(len(offsets) - 1), 25.0, 15.0, 10.0)
    # brute force: the nearest distance over every edge of every segment
    a, b = coords[:-1], coords[1:]
    edge = np.ones(len(coords) - 1, dtype=bool)
    edge[offsets[1:-1] - 1] = False
    a, b = a[edge], b[edge]
    ab = b - a
    len2 = np.maximum((ab * ab).sum(1), 1e-300)
    q = np.column_stack([px, py])[:, None, :]
    r = np.clip(((q - a) * ab).sum(2) / len2, 0, 1)
    nearest = np.sqrt((((q - a) - r[..., None] * ab) ** 2).sum(2)).min(1)
    in_reach = np.flatnonzero(nearest <= 25.0 - 1e-9)
    assert set(in_reach) <= set(p)
    assert set(p) <= set(np.flatnonzero(nearest <= 25.0 + 1e-9))
    # without headings the winner is the nearest segment
    assert np.allclose(d, nearest[p], atol=1e-9)
