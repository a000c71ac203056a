"""Generic numpy operations on 2-D images and 1-D samples, for lenet.preprocess.

Nothing here knows about digits, ink or paper: robust statistics (median, quantile,
mad_sigma, otsu), geometry (pad, frame, bbox, resize), 3x3 filters (box3, max_filter) and
8-connected labelling (label). Images are (H, W) numpy arrays, float32 unless said otherwise;
all of it is plain numpy (PIL only for resize), fast enough for the <= 200 px images
preprocess works on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


# --- statistics of a sample (any shape, flattened) ----------------------------------------------

def median(values: np.ndarray) -> float:
    """Median by partial sort (upper median; O(n), unlike a full sort)."""
    flat = values.ravel()
    return float(np.partition(flat, flat.size // 2)[flat.size // 2]) if flat.size else 0.0


def quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) by partial sort, nearest rank."""
    flat = values.ravel()
    k = min(int(q * flat.size), flat.size - 1)
    return float(np.partition(flat, k)[k])


def mad_sigma(values: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation)."""
    return 1.4826 * median(np.abs(values - median(values)))


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D sample: the cut maximising the between-class variance."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1.0:  # one level: nothing to split
        return lo
    step = (hi - lo) / 64
    hist = np.bincount(np.minimum(((values - lo) / step).astype(np.int64), 63), minlength=64)
    edges = lo + step * np.arange(65)
    centres = (edges[:-1] + edges[1:]) / 2
    n0 = np.cumsum(hist)[:-1]  # pixels at or below each cut
    n1 = hist.sum() - n0
    s0 = np.cumsum(hist * centres)[:-1]
    mean0, mean1 = s0 / np.maximum(n0, 1), (float(hist @ centres) - s0) / np.maximum(n1, 1)
    return float(edges[1 + int(np.argmax(n0 * n1 * (mean0 - mean1) ** 2))])


# --- geometry -----------------------------------------------------------------------------------

def pad(x: np.ndarray, r: int, value: float = 0) -> np.ndarray:
    """x with an r-pixel frame of `value` (np.pad's work for the one case needed, 5x faster)."""
    out = np.full((x.shape[0] + 2 * r, x.shape[1] + 2 * r), value, dtype=x.dtype)
    out[r:r + x.shape[0], r:r + x.shape[1]] = x
    return out


def frame(a: np.ndarray, k: int = 2) -> np.ndarray:
    """The pixels of the outer k-pixel frame of an image, flat."""
    return np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])


def bbox(v: np.ndarray, level: float = 0.02) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the pixels above level, or None."""
    rows, cols = np.nonzero((v > level).any(1))[0], np.nonzero((v > level).any(0))[0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 -> size (w, h): area averaging when shrinking, bilinear when growing."""
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    shrink = size[0] <= arr.shape[1] and size[1] <= arr.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr, "F").resize(size, method), dtype=np.float32)


# --- 3x3 neighbourhood filters ------------------------------------------------------------------

def box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean, edges replicated: (H, W) -> (H, W)."""
    p = pad(x, 1)
    p[0], p[-1], p[:, 0], p[:, -1] = p[1], p[-2], p[:, 1], p[:, -2]  # replicate the edges
    rows = p[:-2] + p[1:-1] + p[2:]  # (H, W+2)
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * np.float32(1 / 9)


def max_filter(x: np.ndarray, radius: int, cross: bool = False) -> np.ndarray:
    """Grey dilation by a (2r+1)-square, or by a 3x3 cross: (H, W) -> (H, W).

    Numpy shifts, not torch: torch's thread pool is slower than this for such small
    images, the more so on a busy machine.
    """
    h, w = x.shape
    p = pad(x, radius, float(x.min()) if x.size else 0.0)
    if cross:  # radius 1: centre, up, down, left, right
        out = np.maximum(p[:-2, 1:-1], p[2:, 1:-1])
        return np.maximum(np.maximum(out, p[1:-1, :-2]), np.maximum(p[1:-1, 2:], x))
    rows = p[: h].copy()  # (H, W+2r): max over the 2r+1 rows
    for i in range(1, 2 * radius + 1):
        np.maximum(rows, p[i:i + h], out=rows)
    out = rows[:, :w].copy()
    for i in range(1, 2 * radius + 1):
        np.maximum(out, rows[:, i:i + w], out=out)
    return out


# --- connected components -----------------------------------------------------------------------

def label(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """8-connected components of the pixels (ys, xs) -> a component id per pixel.

    Union-find on the pixel list, vectorised: every round hooks the larger root of each
    edge under the smaller, then follows parents to the roots; a few rounds suffice.
    """
    n = len(ys)
    index = np.full((shape[0] + 2, shape[1] + 2), -1)
    index[ys + 1, xs + 1] = np.arange(n)
    edges = []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each neighbour pair once
        other = index[ys + 1 + dy, xs + 1 + dx]
        edges.append(np.stack([np.arange(n)[other >= 0], other[other >= 0]]))
    u, v = np.concatenate(edges, axis=1)
    parent = np.arange(n)
    while True:
        pu, pv = parent[u], parent[v]
        if np.array_equal(pu, pv):
            return parent
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
