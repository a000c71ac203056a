"""lenet.imageops directly, each function against a plain (slow, obvious) reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lenet import imageops


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- statistics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 100, 101])
def test_median_and_quantile_are_nearest_rank_order_statistics(n):
    values = rng(n).normal(size=(n,)).astype(np.float32)
    ordered = np.sort(values)
    assert imageops.median(values) == ordered[n // 2]  # the upper median
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert imageops.quantile(values, q) == ordered[min(int(q * n), n - 1)]
    assert imageops.median(values.reshape(-1, 1)) == ordered[n // 2]  # any shape, flattened


def test_median_of_nothing_is_zero():
    assert imageops.median(np.array([], dtype=np.float32)) == 0.0


def test_mad_sigma_estimates_the_standard_deviation_despite_outliers():
    values = rng().normal(10.0, 3.0, size=20_000)
    values[:2_000] = 1e6  # 10% wild outliers move np.std by orders of magnitude, not this
    assert imageops.mad_sigma(values) == pytest.approx(3.0, rel=0.15)
    assert imageops.mad_sigma(np.full(50, 4.0)) == 0.0


def test_otsu_splits_two_clusters_between_them():
    values = np.concatenate([rng(1).normal(40, 5, 3000), rng(2).normal(200, 10, 1000)]).astype(np.float32)
    t = imageops.otsu(values)
    assert 60 < t < 170
    assert imageops.otsu(np.full(10, 7.0, dtype=np.float32)) == 7.0  # one level: nothing to split


# --- geometry ---------------------------------------------------------------------------------------

def test_pad_matches_numpy_pad():
    x = rng().random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(imageops.pad(x, 3, 0.5), np.pad(x, 3, constant_values=0.5))
    assert imageops.pad(x, 2).dtype == np.float32


def test_frame_is_the_outer_ring():
    a = np.arange(36, dtype=np.float32).reshape(6, 6)
    ring = imageops.frame(a, 1)
    want = {*a[0], *a[-1], *a[:, 0], *a[:, -1]}
    assert set(ring.tolist()) == want and len(ring) == 4 * 6  # corners counted twice
    assert set(imageops.frame(a, 3).tolist()) == set(a.ravel().tolist())


def test_bbox_is_top_bottom_left_right_exclusive_ends():
    a = np.zeros((10, 12), dtype=np.float32)
    assert imageops.bbox(a) is None
    a[2, 3], a[6, 9] = 1.0, 0.5
    assert imageops.bbox(a) == (2, 7, 3, 10)
    a[0, 0] = 0.01  # at or below the level: not counted
    assert imageops.bbox(a) == (2, 7, 3, 10) and imageops.bbox(a, level=0.0) == (0, 7, 0, 10)


def test_resize_shrinks_by_area_and_keeps_a_same_size_image():
    a = rng().random((8, 6)).astype(np.float32)
    assert imageops.resize(a, (6, 8)) is a  # size is (w, h)
    half = imageops.resize(a, (3, 4))
    assert half.shape == (4, 3) and half.dtype == np.float32
    np.testing.assert_allclose(half, a.reshape(4, 2, 3, 2).mean(axis=(1, 3)), atol=1e-5)  # 2x2 box means


def test_resize_enlarges_smoothly():
    a = np.zeros((4, 4), dtype=np.float32)
    a[1:3, 1:3] = 1.0
    big = imageops.resize(a, (16, 16))
    assert big.shape == (16, 16) and 0 <= big.min() and big.max() <= 1.0 + 1e-6
    assert big[7:9, 7:9].min() > 0.9 and big[0, 0] < 0.1
    assert len(np.unique(np.round(big, 3))) > 3  # bilinear, not nearest


# --- 3x3 filters ------------------------------------------------------------------------------------

def naive_box3(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, 1, mode="edge")
    return np.mean([p[1 + dy:1 + dy + x.shape[0], 1 + dx:1 + dx + x.shape[1]]
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def naive_max_filter(x: np.ndarray, radius: int, cross: bool = False) -> np.ndarray:
    h, w = x.shape
    out = np.empty_like(x)
    for y in range(h):
        for xx in range(w):
            if cross:
                pts = [(y, xx), (y - 1, xx), (y + 1, xx), (y, xx - 1), (y, xx + 1)]
                out[y, xx] = max(x[a, b] for a, b in pts if 0 <= a < h and 0 <= b < w)
            else:
                out[y, xx] = x[max(0, y - radius):y + radius + 1, max(0, xx - radius):xx + radius + 1].max()
    return out


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_box3_is_the_3x3_mean_with_replicated_edges(h, w, seed):
    x = rng(seed).random((h, w)).astype(np.float32)
    np.testing.assert_allclose(imageops.box3(x), naive_box3(x), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), radius=st.integers(1, 3), cross=st.booleans(),
       seed=st.integers(0, 10_000))
def test_max_filter_matches_a_plain_loop(h, w, radius, cross, seed):
    x = rng(seed).normal(size=(h, w)).astype(np.float32)  # negative values: the pad must not win
    radius = 1 if cross else radius
    np.testing.assert_array_equal(imageops.max_filter(x, radius, cross), naive_max_filter(x, radius, cross))


# --- connected components ---------------------------------------------------------------------------

def naive_components(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """8-connected components by flood fill."""
    seen, parts = set(), []
    for start in zip(*np.nonzero(mask)):
        start = (int(start[0]), int(start[1]))
        if start in seen:
            continue
        stack, part = [start], set()
        seen.add(start)
        while stack:
            y, x = stack.pop()
            part.add((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    n = (y + dy, x + dx)
                    if (0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1] and mask[n] and n not in seen):
                        seen.add(n)
                        stack.append(n)
        parts.append(part)
    return parts


def components(ids: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> list[set[tuple[int, int]]]:
    groups: dict[int, set] = {}
    for i, y, x in zip(ids.tolist(), ys.tolist(), xs.tolist()):
        groups.setdefault(i, set()).add((y, x))
    return list(groups.values())


def test_label_joins_diagonal_neighbours_and_separates_the_rest():
    mask = np.zeros((6, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one component (8-connected)
    mask[0, 5:8] = True  # a bar at the top right
    mask[4:6, 0:2] = True  # a block at the bottom left
    mask[5, 7] = True  # a lone pixel
    ys, xs = np.nonzero(mask)
    got = components(imageops.label(ys, xs, mask.shape), ys, xs)
    assert sorted(map(len, got)) == [1, 3, 3, 4]
    assert sorted(map(sorted, got)) == sorted(map(sorted, naive_components(mask)))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 16), w=st.integers(1, 16), density=st.floats(0.05, 0.7), seed=st.integers(0, 10_000))
def test_label_matches_a_flood_fill(h, w, density, seed):
    mask = rng(seed).random((h, w)) < density
    ys, xs = np.nonzero(mask)
    got = components(imageops.label(ys, xs, mask.shape), ys, xs)
    assert sorted(map(sorted, got)) == sorted(map(sorted, naive_components(mask)))
