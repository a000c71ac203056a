"""A handwritten number -> its digits, left to right, each made into an MNIST-style input.

    lenet predict --number cheque.jpg          # {"number": "2026", "digits": [...]}
    Predictor().predict_number("cheque.jpg")

The same paper and ink stages as one digit (lenet.preprocess.find_ink), at a higher
working resolution, then:
  1. connected components of the ink (8-connected), specks dropped;
  2. the broken parts of one digit merged: parts that share most of their columns (a 5's
     flag over its body, a 4's two strokes, a 7's bar), or a small part right beside one;
  3. bars dropped (a dash, an underline, a rule: one stroke deep, twice as wide as tall);
  4. a candidate that may hold several touching digits segmented by recognition: cuts may
     fall where its ink is locally thinnest; the model scores every run between two cuts (how
     surely it is one digit), a width prior and a cost per digit are added, and dynamic
     programming picks the best split, or none (without a model: cut at the thinnest column
     when surely too wide);
  5. each candidate's soft ink cropped and made into a 28x28 input like any single digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from lenet import imageops
from lenet.preprocess import DIGITS, InkImage, Preprocessed, find_ink, looks_like_a_bar, soft_ink, to_model_input

NUMBER_SIDE = 640  # long side the analysis runs at: 8 digits across keep ~60 px each
SPECK = 0.03  # a part with under 3% of the heaviest part's ink, not beside a digit, is a speck
SHARED_COLUMNS = 0.5  # parts sharing this share of the narrower one's columns are one digit
BESIDE = 0.15  # a small part closer than this share of the digit height is a broken stroke
SMALL_PART = 0.25  # ... when it has under this share of its neighbour's ink (and half its height)
SPECK_DIGIT = 0.1  # after merging, a part under this share of the median digit's ink is a speck
MAY_BE_SEVERAL = 0.8  # a candidate wider than this many heights (its own or a typical digit's) may be several digits
SURE_WIDE = 1.9  # ... and wider than this surely is
RUN_WIDTH = (0.08, 1.3)  # a digit's width, in heights: a 1's stroke .. a wide 0
MAX_CUTS, CUT_SPACING = 10, 0.08  # cut places tried per candidate, and their least spacing in heights
SPLIT_PRIOR = 0.5  # each digit found in a candidate costs this factor: a split must be clearly likelier
SURE_PIECE = 0.7  # each digit a split makes must score at least this
SURELY_ONE = 0.9  # a candidate the model reads as one digit at least this surely stays whole
USUAL_WIDTH, WIDTH_FALLOFF = 0.9, 0.3  # digits are at most this wide (in heights); wider, a Gaussian fall-off
CUT_ZONE = (0.3, 0.7)  # without a model: where the one cut may fall, as shares of the candidate's width
Score = Callable[[list[Preprocessed]], list[float]]  # inputs -> how surely each is a digit, in [0, 1]


@dataclass
class Candidate:
    """One digit's place in the image: its pixels (working resolution) and its box."""

    ys: np.ndarray  # (n,) rows of its ink pixels
    xs: np.ndarray  # (n,) columns
    mass: float  # its ink, grey levels summed
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right), exclusive ends; set from the pixels

    def __post_init__(self):
        self.box = int(self.ys.min()), int(self.ys.max()) + 1, int(self.xs.min()), int(self.xs.max()) + 1

    def merged(self, other: Candidate) -> Candidate:
        return Candidate(np.concatenate([self.ys, other.ys]), np.concatenate([self.xs, other.xs]),
                         self.mass + other.mass)


def read_number(img: Image.Image, score: Score | None = None) -> tuple[list[Preprocessed], str | None]:
    """An image of a number -> (one Preprocessed per digit, left to right, each with its box in
    the input's pixels; the reason when there are none). `score` (how surely each of a list of
    inputs is one digit: Predictor.digit_score) decides the splits that shape alone cannot."""
    found = find_ink(img, DIGITS, side=NUMBER_SIDE)
    if isinstance(found, Preprocessed):
        return [], found.reason
    parts = components(found)
    if not parts:
        return [], "no digit found: the ink is too faint"
    candidates = [c for c in merge_broken(parts) if not _is_bar(c)]
    if not candidates:
        return [], "no digit found: only dashes or lines"
    digits = split_wide(candidates, found, score)
    digits.sort(key=lambda c: (c.box[2] + c.box[3]) / 2)  # left to right by the box's centre
    return [digit_input(found, c) for c in digits], None


def components(found: InkImage) -> list[Candidate]:
    """The ink mask's 8-connected components, specks dropped."""
    ys, xs = np.nonzero(found.mask)
    if len(ys) == 0:
        return []
    ids, inv = np.unique(imageops.label(ys, xs, found.mask.shape), return_inverse=True)
    mass = np.bincount(inv, weights=found.ink[ys, xs], minlength=len(ids))
    order = np.argsort(inv, kind="stable")
    starts = np.searchsorted(inv[order], np.arange(len(ids) + 1))
    parts = [Candidate(ys[order[a:b]], xs[order[a:b]], float(m))
             for a, b, m in zip(starts[:-1], starts[1:], mass)]
    heaviest = max(p.mass for p in parts)
    height = max(p.box[1] - p.box[0] for p in parts)
    heavy = [p for p in parts if p.mass >= SPECK * heaviest]
    light = [p for p in parts if 0.002 * heaviest <= p.mass < SPECK * heaviest
             and any(_gap(p, q) <= BESIDE * height for q in heavy)]  # a broken stroke beside a digit
    return heavy + light


def _gap(a: Candidate, b: Candidate) -> int:
    """Pixels between two boxes (0 when they touch or overlap)."""
    at, ab, al, ar = a.box
    bt, bb, bl, br = b.box
    return max(0, bt - ab, at - bb, bl - ar, al - br)


def _shared_columns(a: Candidate, b: Candidate) -> float:
    """The share of the narrower box's columns that the other box spans too."""
    _, _, al, ar = a.box
    _, _, bl, br = b.box
    return max(0, min(ar, br) - max(al, bl)) / max(1, min(ar - al, br - bl))


def merge_broken(parts: list[Candidate]) -> list[Candidate]:
    """Merge the parts of one digit until nothing more merges, then drop what is left too
    small to be a digit (a speck between two digits)."""
    parts = sorted(parts, key=lambda c: -c.mass)
    height = float(np.median([p.box[1] - p.box[0] for p in parts]))
    merged = True
    while merged and len(parts) > 1:
        merged = False
        for i, j in ((i, j) for i in range(len(parts)) for j in range(i + 1, len(parts))):
            if _one_digit(parts[i], parts[j], height):
                parts[i] = parts[i].merged(parts[j])
                del parts[j]
                merged = True
                break
    mass = float(np.median([p.mass for p in parts]))
    return [p for p in parts if p.mass >= SPECK_DIGIT * mass]


def _one_digit(a: Candidate, b: Candidate, height: float) -> bool:
    """Two parts of one digit: sharing most columns (a flag over a body, a 4's strokes),
    boxes that overlap and together are no wider than a digit (a broken loop), a short part
    just above or below the other (a lifted flag or bar), or a small, short part right
    beside the other (a broken stroke; a 1 is light but tall)."""
    if _shared_columns(a, b) >= SHARED_COLUMNS:
        return True
    (at, ab, al, ar), (bt, bb, bl, br) = a.box, b.box
    union = max(ar, br) - min(al, bl)
    if _gap(a, b) == 0 and min(ab, bb) > max(at, bt) and union <= height:
        return True
    stacked = min(ar, br) > max(al, bl) and max(bt - ab, at - bb) <= BESIDE * height  # one above the other
    if stacked and min(ab - at, bb - bt) < 0.5 * max(ab - at, bb - bt) and union <= 1.5 * height:
        return True  # a flag or bar lifted off its digit (a 5's flag, a 7's bar)
    big, small = (a, b) if a.mass >= b.mass else (b, a)
    short = small.box[1] - small.box[0] < SMALL_PART * 2 * (big.box[1] - big.box[0])
    return small.mass < SMALL_PART * big.mass and short and _gap(a, b) <= BESIDE * height


def split_wide(parts: list[Candidate], found: InkImage, score: Score | None = None) -> list[Candidate]:
    """Each candidate that may hold several touching digits -> its digits (see _segment)."""
    heights = [p.box[1] - p.box[0] for p in parts]
    typical = float(np.median(heights)) if heights else 1.0
    return [digit for part in parts for digit in _segment(part, found, typical, score)]


def _segment(part: Candidate, found: InkImage, typical: float, score: Score | None) -> list[Candidate]:
    """One candidate -> one or more digits.

    Without a model (score None), shape alone: wider than SURE_WIDE heights, cut at the
    thinnest column, recursively. With one, segmentation by recognition: the columns where
    the ink is locally thinnest are the places a cut may fall; every run between two of them
    that is as wide as a digit may be one; the model scores each run (how surely it is a
    digit). A whole read at SURELY_ONE stays whole; otherwise the split whose runs' scores,
    times SPLIT_PRIOR per digit and a width prior, multiply to the most wins (dynamic
    programming over the cut places), where every digit of a split must score SURE_PIECE (the
    model is often sure of a fragment too). The whole is a choice unless surely too wide; a
    surely too wide candidate with no clear split is cut by shape alone.
    Tuned on numbers of MNIST test digits with another seed than the tests' and benchmark's.
    """
    top, bottom, left, right = part.box
    height = max(bottom - top, typical)
    ratio = (right - left) / height
    if ratio <= MAY_BE_SEVERAL or len(part.xs) < 4 or _is_bar(part):  # (a bar: read_number drops those)
        return [part]
    if score is None:
        halves = _cut(part) if ratio > SURE_WIDE else None
        return [part] if halves is None else [d for half in halves for d in _segment(half, found, typical, None)]
    whole_score = score([digit_input(found, part)])[0] if ratio <= SURE_WIDE else None
    if whole_score is not None and whole_score >= SURELY_ONE:
        return [part]  # read as one digit with confidence: no split outweighs that (and no runs to score)
    points = [left, *_cut_places(part, height), right]
    runs = {(i, j): _columns(part, points[i], points[j]) for i in range(len(points)) for j in range(i + 1, len(points))
            if RUN_WIDTH[0] * height <= points[j] - points[i] <= RUN_WIDTH[1] * height
            or (i == 0 and j == len(points) - 1 and ratio <= SURE_WIDE)}
    runs = {key: run for key, run in runs.items() if run is not None}
    if not runs:
        return _no_split(part, found, typical, ratio)
    whole = (0, len(points) - 1)
    keys = [k for k in runs if k != whole] + ([whole] if whole in runs else [])  # the whole last: scored already
    scores = np.asarray(score([digit_input(found, runs[k]) for k in keys if k != whole])
                        + ([whole_score] if whole in runs else []), np.float64)
    logs = np.log(np.maximum(scores, 1e-9)) + np.log(SPLIT_PRIOR)
    logs[(scores < SURE_PIECE) & np.array([k != whole for k in keys])] = -np.inf  # a split's digits must each be clear
    widths = np.array([(runs[k].box[3] - runs[k].box[2]) / height for k in keys])
    logs -= (np.maximum(widths - USUAL_WIDTH, 0.0) / WIDTH_FALLOFF) ** 2  # a digit wider than usual is less likely
    path = _best_path(keys, logs, len(points))
    return [runs[k] for k in path] if path else _no_split(part, found, typical, ratio)


def _is_bar(part: Candidate) -> bool:
    """A dash, an underline, a rule (lenet.preprocess.looks_like_a_bar), the stroke taken as the
    ink's depth in a usual column: a bar fills its box top to bottom there."""
    top, bottom, left, right = part.box
    depth = np.bincount(part.xs - left, minlength=right - left)  # (width,) ink pixels per column
    return looks_like_a_bar(bottom - top, right - left, float(np.median(depth[depth > 0])))


def _no_split(part: Candidate, found: InkImage, typical: float, ratio: float) -> list[Candidate]:
    """Recognition found no split: the whole, unless it is surely too wide (then shape alone cuts it)."""
    return [part] if ratio <= SURE_WIDE else _segment(part, found, typical, None)


def _best_path(keys: list[tuple[int, int]], logs: np.ndarray, points: int) -> list[tuple[int, int]] | None:
    """Runs (i, j) between cut places 0..points-1 with their log scores -> the chain of runs
    from the first place to the last with the highest total, or None when none is finite."""
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {0: (0.0, [])}  # place -> (total, runs up to it)
    for j in range(1, points):
        options = [(best[i][0] + logs[n], best[i][1] + [(i, jj)]) for n, (i, jj) in enumerate(keys)
                   if jj == j and i in best]
        if options:
            best[j] = max(options, key=lambda o: o[0])
    end = best.get(points - 1)
    return end[1] if end is not None and np.isfinite(end[0]) else None


def _cut_places(part: Candidate, height: float) -> list[int]:
    """Columns (absolute) where the ink is locally thinnest, at most MAX_CUTS, CUT_SPACING apart."""
    _, _, left, right = part.box
    columns = np.bincount(part.xs - left, minlength=right - left).astype(np.float32)  # ink pixels per column
    smooth = np.convolve(np.pad(columns, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    edge = max(1, int(RUN_WIDTH[0] * height))
    inner = np.arange(edge, len(smooth) - edge)
    minima = [int(c) for c in inner if smooth[c] <= smooth[c - 1] and smooth[c] <= smooth[c + 1]]
    chosen: list[int] = []
    for c in sorted(minima, key=lambda c: smooth[c]):
        if len(chosen) < MAX_CUTS and all(abs(c - o) >= CUT_SPACING * height for o in chosen):
            chosen.append(c)
    return sorted(left + c for c in chosen)


def _columns(part: Candidate, start: int, stop: int) -> Candidate | None:
    """The candidate's pixels in columns start..stop-1, or None when there are none."""
    inside = (part.xs >= start) & (part.xs < stop)
    if not inside.any():
        return None
    return Candidate(part.ys[inside], part.xs[inside], part.mass * inside.sum() / len(part.xs))


def _cut(part: Candidate) -> tuple[Candidate, Candidate] | None:
    """The candidate cut at the column with the least ink in its middle part (nearest the middle on ties)."""
    top, bottom, left, right = part.box
    width = right - left
    columns = np.bincount(part.xs - left, minlength=width).astype(np.float32)  # ink pixels per column
    lo, hi = int(width * CUT_ZONE[0]), max(int(width * CUT_ZONE[1]), int(width * CUT_ZONE[0]) + 1)
    cost = columns[lo:hi] + 1e-3 * np.abs(np.arange(lo, hi) - (width - 1) / 2)
    cut = left + lo + int(np.argmin(cost))
    a, b = part.xs < cut, part.xs >= cut
    if not a.any() or not b.any():
        return None
    share = part.mass / len(part.xs)
    return Candidate(part.ys[a], part.xs[a], share * a.sum()), Candidate(part.ys[b], part.xs[b], share * b.sum())


def digit_input(found: InkImage, digit: Candidate) -> Preprocessed:
    """One candidate -> its 28x28 input: its own ink (and the soft edge beside it) cropped."""
    top, bottom, left, right = digit.box
    y0, x0 = max(top - 2, 0), max(left - 2, 0)
    y1, x1 = min(bottom + 2, found.ink.shape[0]), min(right + 2, found.ink.shape[1])
    own = np.zeros((y1 - y0, x1 - x0), bool)
    own[digit.ys - y0, digit.xs - x0] = True
    soft = soft_ink(found.ink[y0:y1, x0:x1], own, found.noise, DIGITS)  # (h, w) in [0, 1]
    crop = imageops.bbox(soft)
    if crop is None:
        return found.nothing("the ink is too faint")
    t, b, l, r = crop
    return to_model_input(soft[t:b, l:r], DIGITS, found, found.input_box(y0 + t, y0 + b, x0 + l, x0 + r))
