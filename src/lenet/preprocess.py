"""A user's image -> the (1, 28, 28) white-on-black tensor the models saw in training.

MNIST digits are white on black, fitted into a 20x20 box by their aspect ratio with
anti-aliasing and placed in 28x28 so their centre of mass is at the centre. A photo, a scan
or a canvas drawing is none of that, so `preprocess` rebuilds it step by step, all as array
operations on an image first reduced to at most WORK_SIDE pixels:

  a viewer's "nearest" enlargement of a small scan undone -> grayscale (transparency
  counts as paper) -> the paper as a smooth surface fitted
  robustly (kills tint, lighting gradients, vignetting) -> polarity (dark or light ink) ->
  ink map, noise level, contrast (Otsu), threshold -> ruled lines off -> connected
  components (drops speckle, ruling lines, the desk around a sheet) -> crop -> stroke
  width brought into MNIST's range -> fit into 20x20 -> paste into 28x28 by centre of mass.

Nothing found (a blank sheet, noise, a speck) gives `Preprocessed.image` None and a reason,
never a guess. The generic array operations it uses (robust statistics, Otsu, 3x3 filters,
connected components) are in lenet.imageops.

Used by:
    lenet predict photo.jpg scans/ [--save-input DIR]     # lenet.predict
    lenet serve                                           # POST /api/predict
    python benchmarks/preprocess_speed.py
    python benchmarks/realistic_digits.py
"""

from __future__ import annotations


import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from lenet import imageops  # called as imageops.NAME: bbox, label, pad are also local names here
from lenet.imagefile import WORK_SIDE

# --- every constant of the stages, in one place -------------------------------------------------
# WORK_SIDE (200, lenet.imagefile): the long side the analysis runs at; a digit filling 1/5 of a photo keeps 40 px
SMALL_SIDE = 48  # long side of the small copies the paper is fitted on and components found on
OUT, BOX = 28, 20  # MNIST: a 20x20 box inside 28x28
CENTRE = 14.0  # MNIST's centre of mass sits on pixel index 14 (measured: 13.99, 14.01)
# Paper: a quadratic surface fitted by trimmed least squares (background).
FIT_SIGMAS = 2.5  # a pixel within this many sigma of the surface is paper (refit on those)
FIT_ROUNDS = 4  # refits; a clean canvas converges at once
SURFACE_SHARE, PLANE_SHARE = 0.5, 0.25  # paper shares (and 64, 32 px) a quadratic, a plane needs
TWO_LEVELS = 4.0  # Otsu's class medians this many paper sigmas apart: ink and paper, not noise
FLAT = 0.1  # paper pixels change by less than this share of the ink's contrast per pixel
CORE_SHARE = 0.02  # the flat paper must be at least this share of the image to be trusted
OUTER = 0.75  # else (all blurred) the paper is its class's quarter farthest from the ink
FRAME_DECISIVE = 0.1  # the light class holding 60% of the frame is the paper's; the dark one needs 70%
DARK_PAPER = 0.35  # frame split evenly: dark paper only when the light class is under 35% of the image
SHEET, ENCLOSED = 0.6, 0.05  # a class over 60% of the image holding under 5% of the frame: a sheet
NOISE_FLOOR = 0.5  # grey levels: the least noise assumed (clean canvases have none)
# Contrast and ink.
INK_SIGMAS = 4.0  # smoothed ink this many noise sigmas above the paper may be ink
CONTRAST_SIGMAS = 8.0  # the ink's contrast must be this many sigmas, and MIN_CONTRAST levels
MIN_CONTRAST = 16.0  # grey levels (of 255) between ink and paper below which nothing is there
# Components: the desk around a photographed sheet (touching 2+ borders) is solid or a frame.
DESK_FILL = 0.8  # share of its box a solid desk region covers (a digit's strokes cover less)
DESK_FRAME = 0.5  # share of the image's border a desk frame covers (a tight digit touches less)
# Stroke width as 2*sum(v)/sum(|grad v|) in 20-box pixels: MNIST's 1st..99th percentile is
# 1.8..4.4 (median 2.5). Outside [WIDTH_LO, WIDTH_HI] a stroke is thickened or thinned,
# continuously: just past the limit to the limit, far past it further in (see _target_width).
WIDTH_LO, WIDTH_HI = 1.8, 4.4
NO_DIGIT = "no digit found"
# A small scan enlarged by a viewer's "nearest" filter repeats each pixel k x k times: undone
# exactly (undo_pixel_repeat), the later stages see the scan's own pixels, not staircases.
REPEAT_MAX_SIDE = 2048  # larger images are not checked (a photo is never a pixel-repeated scan)
REPEAT_MIN_SIDE = 3  # the reduced image keeps at least this many pixels per side


@dataclass(frozen=True)
class Mode:
    """How an image becomes a model input: MNIST's way (DIGITS) or Fashion-MNIST's (OBJECTS).

    One object instead of flags that must agree; GET /api/models serves it to the page.
    """

    name: str
    box: int  # long side of the fitted ink in the 28x28 (MNIST 20, Fashion-MNIST 28)
    center_by_mass: bool  # place by centre of mass (MNIST) or by the box's centre
    paper: str  # "fit": a smooth surface under the majority/frame; "border": the image's frame
    ink_share: float  # a pixel is ink above this share of the contrast
    saturate_at: float  # quantile of the ink taken as full strength (MNIST's strokes are 255)
    noise_sigmas: float  # paper noise taken off the soft ink, in sigmas
    strokes: bool  # bring the stroke width into MNIST's range
    rulings: bool  # take notebook rulings off

    def as_json(self) -> dict:
        return {"name": self.name, "box": self.box, "center_by_mass": self.center_by_mass}


DIGITS = Mode("digits", BOX, True, "fit", 0.4, 0.75, 2.5, True, True)
# A garment may fill most of its photo (the paper is its border); grey levels are kept, no
# stroke change, the long side fills all 28 px and the box is centred, as in Fashion-MNIST.
OBJECTS = Mode("objects", OUT, False, "border", 0.1, 0.99, 0.0, False, False)
MODES = {m.name: m for m in (DIGITS, OBJECTS)}
BAR_DEPTH, BAR_WIDE = 1.6, 2.0  # ink at most this many strokes deep and this many times as wide as tall: a bar


def looks_like_a_bar(height: float, width: float, stroke: float) -> bool:
    """A dash, an underline, a rule: no digit is that wide and only one stroke deep (a 1 is one
    stroke deep, but tall). Any one unit for the three lengths."""
    return width >= BAR_WIDE * height and height <= BAR_DEPTH * stroke


@dataclass
class Preprocessed:
    """What preprocess made of an image, and why (for --save-input, tests and debugging)."""

    image: torch.Tensor | None  # (1, 28, 28) float32 in [0, 1], white on black; None: nothing found
    reason: str | None = None  # why image is None ("no digit found: ...")
    inverted: bool = False  # True when the ink was darker than the paper (the usual photo)
    bbox: tuple[int, int, int, int] | None = None  # ink box (left, top, right, bottom) in the input's pixels
    contrast: float = 0.0  # ink minus paper, grey levels
    noise: float = 0.0  # robust std of the paper, grey levels
    stroke_width: float = 0.0  # estimated stroke width in 20-box pixels, before any change
    stroke_change: float = 0.0  # width added (+) or removed (-), in 20-box pixels

    @property
    def bar(self) -> bool:
        """Its digit-mode ink is a bar (looks_like_a_bar): a dash or a rule, not a digit."""
        if self.bbox is None or self.stroke_width <= 0:
            return False
        left, top, right, bottom = self.bbox
        scale = BOX / max(right - left, bottom - top, 1)  # input pixels -> 20-box pixels
        return looks_like_a_bar((bottom - top) * scale, (right - left) * scale, self.stroke_width)


def to_gray(img: Image.Image, side: int = WORK_SIDE) -> np.ndarray:
    """Any mode -> (H, W) float32 grey levels 0..255 at most `side` on the long side.

    Reduced first (integer box reduction: cheap, anti-aliased) when the mode allows it.
    Transparency counts as paper: transparent pixels take the colour that contrasts with
    the opaque ones when those are few (strokes on a transparent canvas), or the opaque
    pixels' median when they are many (a cut-out photo of paper). Float and 32-bit images
    may hold anything: see _grey_levels.
    """
    factor = -(-max(img.size) // side)  # ceil
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _deep_gray(img, factor)
    if img.mode in ("La", "RGBa"):  # premultiplied alpha
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if img.mode == "1" else "RGB")

    def small(channel: Image.Image) -> np.ndarray:
        return np.asarray(channel.reduce(factor) if factor > 1 else channel, dtype=np.float32)

    if img.mode in ("RGBA", "LA"):  # two single channels reduce 4x faster than RGBA
        lum = small(img.convert("L"))  # (H, W) the colour's grey level, alpha ignored
        alpha = small(img.getchannel("A")) * np.float32(1 / 255)  # (H, W) in [0, 1]
        opaque = alpha > 0.5
        if not opaque.any():
            return np.full(alpha.shape, 255.0, dtype=np.float32)
        if opaque.mean() < 0.5:  # few opaque pixels: they are the ink
            paper = 255.0 if float((lum * alpha).sum()) < 128 * float(alpha.sum()) else 0.0
        else:
            paper = imageops.median(lum[opaque])
        return alpha * (lum - np.float32(paper)) + np.float32(paper)
    if factor > 1:
        img = img.reduce(factor)  # before the grey conversion: less to convert
    return np.asarray(img.convert("L"), dtype=np.float32)


def pixel_repeat(img: Image.Image) -> int:
    """k when every pixel of the image is repeated in k x k blocks aligned to its corner (a
    small image enlarged k times by nearest neighbour), else 1.

    k is the greatest common divisor of the positions where a column or row differs from the
    one before it, and must divide both sides.
    """
    w, h = img.size
    if max(w, h) > REPEAT_MAX_SIDE or min(w, h) < 2 * REPEAT_MIN_SIDE:
        return 1
    rows01, cols01 = np.asarray(img.crop((0, 0, w, 2))), np.asarray(img.crop((0, 0, 2, h)))
    if not (np.array_equal(rows01[0], rows01[1]) and np.array_equal(cols01[:, 0], cols01[:, 1])):
        return 1  # a block of k >= 2 starts at the corner: rows 0 and 1 (and columns) are equal; a photo's are not
    # Three rows and three columns across the middle first (a canvas with blank margins has equal
    # rows 0 and 1): their change positions are some of the whole image's, so the gcd of the whole
    # divides theirs, and 1 there ends it (a 2048 px canvas: 1 ms instead of 100 ms).
    rows = np.concatenate([np.asarray(img.crop((0, y, w, y + 1))).reshape(1, w, -1)
                           for y in (h // 4, h // 2, 3 * h // 4)])  # (3, W, channels)
    cols = np.concatenate([np.asarray(img.crop((x, 0, x + 1, h))).reshape(h, 1, -1)
                           for x in (w // 4, w // 2, 3 * w // 4)], axis=1)  # (H, 3, channels)
    some = _change_positions(rows, cols)
    if len(some) and np.gcd.reduce(np.concatenate([some, [w, h]])) == 1:
        return 1
    a = np.asarray(img).reshape(h, w, -1)  # (H, W, channels) for every mode
    changes = _change_positions(a, a)
    if len(changes) == 0:
        return 1  # one colour: nothing to undo
    k = int(np.gcd.reduce(np.concatenate([changes, [w, h]])))
    return k if k >= 2 and min(w, h) // k >= REPEAT_MIN_SIDE else 1


def _change_positions(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(R, W, C) rows and (H, K, C) columns of an image -> the positions where a column of
    `rows` differs from the one before it, and where a row of `cols` does (the first of each new run)."""
    across = np.flatnonzero((rows[:, 1:] != rows[:, :-1]).any(axis=(0, 2))) + 1
    down = np.flatnonzero((cols[1:] != cols[:-1]).any(axis=(1, 2))) + 1
    return np.concatenate([across, down])


def undo_pixel_repeat(img: Image.Image) -> Image.Image:
    """The image at 1/k of its size when it is a k-times nearest-neighbour enlargement (exact:
    each block is one pixel), else the image itself."""
    k = pixel_repeat(img)
    return img if k == 1 else img.resize((img.width // k, img.height // k), Image.Resampling.NEAREST)


def _deep_gray(img: Image.Image, factor: int) -> np.ndarray:
    """A 16-bit, 32-bit or float image -> (H/factor, W/factor) float32 grey levels 0..255.

    Reduced as floats (Pillow's reduce of 32-bit integers overflows); 16-bit values are
    divided by 257, 32-bit ones too when any is above 255; then _grey_levels makes whatever
    is left (NaN, Inf, negative, huge) finite and 0..255.
    """
    top = img.getextrema()[1] if img.mode == "I" else 0
    deep = img.convert("I") if img.mode.startswith("I;16") else img  # I;16B etc. convert only to I
    deep = deep.convert("F") if deep.mode == "I" else deep
    arr = np.asarray(deep.reduce(factor) if factor > 1 else deep, dtype=np.float64)
    if img.mode.startswith("I;16") or top > 255:
        arr = arr / 257.0
    return _grey_levels(arr, img.mode == "F")


def _grey_levels(arr: np.ndarray, floats: bool) -> np.ndarray:
    """(H, W) float64 values of a float or 32-bit image -> finite grey levels 0..255, float32.

    NaN is taken as paper (the median of the finite values), +-Inf as the brightest or
    darkest finite value; a float image within [0, 1] is scaled to 0..255 (as arrays are);
    anything else outside 0..255 (negative, 32-bit, 1e38) is stretched linearly onto it.
    """
    with np.errstate(all="ignore"):
        finite = np.isfinite(arr)
        if not finite.all():
            if not finite.any():
                return np.full(arr.shape, 255.0, dtype=np.float32)  # nothing but NaN and Inf: blank
            values = arr[finite]
            arr = np.where(np.isnan(arr), imageops.median(values), np.clip(arr, values.min(), values.max()))
        lo, hi = float(arr.min()), float(arr.max())
        if floats and lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        elif lo < 0.0 or hi > 255.0:
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.full(arr.shape, 255.0)
        return arr.astype(np.float32)


def preprocess(img: Image.Image, mode: Mode = DIGITS) -> Preprocessed:
    """A PIL image of one digit (any size, mode, polarity) -> Preprocessed (1, 28, 28) or None.

    DIGITS follows MNIST (strokes saturated to white, width normalised, 20x20 box, centre of
    mass); OBJECTS follows Fashion-MNIST (see Mode).
    """
    found = find_ink(img, mode)
    if isinstance(found, Preprocessed):
        return found  # nothing there, and why
    kept = _components(found.mask, found.smooth)
    if kept is None:
        return found.nothing("only ruling lines or the desk")
    soft, (y0, x0) = _soft_crop(found.ink, found.mask, *kept, found.noise, mode)  # (h, w) in [0, 1]
    crop_box = imageops.bbox(soft)
    if crop_box is None:
        return found.nothing("the ink is too faint")
    top, bottom, left, right = crop_box
    if max(bottom - top, right - left) < max(2, 0.02 * max(found.ink.shape)):
        return found.nothing("only a speck")
    bbox = found.input_box(y0 + top, y0 + bottom, x0 + left, x0 + right)
    return to_model_input(soft[top:bottom, left:right], mode, found, bbox)


@dataclass
class InkImage:
    """What the paper, contrast and ink stages found in an image, at working resolution."""

    ink: np.ndarray  # (H, W) how far each pixel is from the paper towards the ink, grey levels >= 0
    smooth: np.ndarray  # (H, W) the same, smoothed where the paper is noisy (decides what is ink)
    mask: np.ndarray  # (H, W) bool: the ink pixels (rulings taken off)
    dark: bool  # the ink is darker than the paper
    noise: float  # robust std of the paper, grey levels
    contrast: float  # ink minus paper, grey levels
    scale: float  # input pixels per working pixel

    def nothing(self, why: str) -> Preprocessed:
        return Preprocessed(None, f"{NO_DIGIT}: {why}", self.dark, contrast=self.contrast, noise=self.noise)

    def input_box(self, top: int, bottom: int, left: int, right: int) -> tuple[int, int, int, int]:
        """A box in working pixels -> (left, top, right, bottom) in the input's pixels."""
        s = self.scale
        return int(left * s), int(top * s), int(np.ceil(right * s)), int(np.ceil(bottom * s))


def find_ink(img: Image.Image, mode: Mode = DIGITS, side: int = WORK_SIDE) -> InkImage | Preprocessed:
    """The paper, contrast and ink stages: an image -> its ink at <= `side` px, or a
    Preprocessed with no image and the reason when no ink stands out of the paper."""
    gray = to_gray(undo_pixel_repeat(img), side)  # (H, W), long side <= side; a "nearest" k-times enlargement at 1/k
    paper = estimate_paper(gray, mode)
    ink, smooth, noise_s = ink_map(gray, paper)  # (H, W) each
    contrast = ink_contrast(smooth, noise_s)
    found = InkImage(ink, smooth, np.zeros(gray.shape, bool), paper.dark, paper.noise, contrast,
                     max(img.size) / max(gray.shape))
    if contrast < max(MIN_CONTRAST, CONTRAST_SIGMAS * noise_s):
        return found.nothing("no ink stands out from the paper")
    lines = _rulings(smooth, contrast) if mode.rulings else None
    if lines is not None:
        found.ink, found.smooth = np.maximum(ink - lines, 0.0), np.maximum(smooth - lines, 0.0)
    found.mask = found.smooth > max(INK_SIGMAS * noise_s, mode.ink_share * contrast)  # (H, W)
    return found


def to_model_input(crop: np.ndarray, mode: Mode, found: InkImage | None = None,
                   bbox: tuple[int, int, int, int] | None = None) -> Preprocessed:
    """A tight (h, w) crop of soft ink in [0, 1] -> the (1, 28, 28) model input: strokes to
    MNIST's width (digits), fitted into the mode's box, placed by centre of mass or box."""
    width = change = 0.0
    if mode.strokes:
        crop, width, change = _normalise_strokes(crop, mode.box)
    out = _place(_fit(crop, mode.box), mode.center_by_mass)  # (28, 28)
    dark, contrast, noise = (found.dark, found.contrast, found.noise) if found else (False, 0.0, 0.0)
    return Preprocessed(torch.from_numpy(out)[None], None, dark, bbox, contrast, noise, width, change)


def to_png(image: torch.Tensor) -> bytes:
    """A (1, 28, 28) or (28, 28) image in [0, 1] -> PNG bytes (8-bit grey, white on black)."""
    arr = (image.detach().reshape(image.shape[-2], image.shape[-1]).clamp(0, 1) * 255).round()
    buf = io.BytesIO()
    Image.fromarray(arr.to(torch.uint8).numpy(), "L").save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Paper:
    """The paper under the ink: its grey level everywhere, which side the ink is on, its noise."""

    level: np.ndarray  # (H, W) grey level of the paper
    dark: bool  # the ink is darker than the paper
    noise: float  # robust std of the paper around `level`, grey levels (>= NOISE_FLOOR)


def estimate_paper(gray: np.ndarray, mode: Mode = DIGITS) -> Paper:
    """(H, W) grey -> the paper: a fitted smooth surface (digits) or the border's level (objects).

    The noise is measured on the paper's side of the surface only (ink never lies there),
    so it holds however much of the image the ink covers.
    """
    level, dark = background(gray) if mode.paper == "fit" else border_background(gray)
    resid = gray - level
    if mode.paper == "fit":
        sample = resid[::3, ::3] if gray.size > 9000 else resid
        away = sample[sample >= 0] if dark else -sample[sample <= 0]  # the paper's side, >= 0
        noise = 1.4826 * imageops.median(away)  # one-sided MAD: the median of |N(0, s)| is 0.674 s
    else:
        noise = imageops.mad_sigma(imageops.frame(resid))
    return Paper(level, dark, max(noise, NOISE_FLOOR))


def ink_map(gray: np.ndarray, paper: Paper) -> tuple[np.ndarray, np.ndarray, float]:
    """(H, W) grey -> (ink, smoothed ink, noise of the smoothed ink).

    Ink is how far a pixel is from the paper towards the ink's side, in grey levels. The
    smoothed copy (3x3 mean; not for small clean images such as MNIST itself, where every
    pixel counts) decides what is ink: it has a third of the noise, or half for JPEG noise,
    which is correlated between neighbours.
    """
    resid = gray - paper.level
    ink = np.maximum(-resid if paper.dark else resid, 0.0)  # (H, W) >= 0
    if paper.noise < 1.0 or (min(gray.shape) < SMALL_SIDE and paper.noise < 3.0):  # a canvas, MNIST
        return ink, ink, paper.noise
    return ink, imageops.box3(ink), max(paper.noise / 2.0, NOISE_FLOOR)


def ink_contrast(smooth: np.ndarray, noise: float) -> float:
    """Ink minus paper in grey levels: the median of the strong class (Otsu) of what stands
    out of the noise. Without Otsu, a faint gradient left on a big sheet would outvote a
    small digit."""
    strong = smooth[smooth > max(INK_SIGMAS * noise, 4.0)]
    return imageops.median(strong[strong >= imageops.otsu(strong)]) if strong.size >= 3 else 0.0


def background(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W) grey -> (paper level (H, W), ink is dark).

    The paper is a smooth surface (tint, lighting gradient, vignette): a quadratic in x and
    y fitted to a small copy of the image by trimmed least squares. It starts from the paper
    pixels `_paper_start` picks, and each round refits on the pixels within FIT_SIGMAS of
    the last fit (never the ink's class of a two-level image), so the ink is left out
    whichever its polarity. Where the paper is a minority (a tight crop) it is known only in
    pieces around the ink, too few for a quadratic: a plane, or a flat level, is fitted.
    Polarity: the side with more mass beyond 3 sigma of the fit is the ink.
    """
    h, w = gray.shape
    factor = -(-max(h, w) // SMALL_SIDE)
    small = imageops.resize(gray, (max(1, w // factor), max(1, h // factor)))  # (h', w') area-averaged
    values = small.ravel()
    centre, sigma, allowed = _paper_start(small)  # allowed: (h'*w',) pixels that may be paper
    inliers = allowed & (np.abs(values - centre) <= max(FIT_SIGMAS * sigma, 2.0))
    share, count = float(inliers.mean()), int(inliers.sum())
    degree = 2 if share >= SURFACE_SHARE and count >= 64 else 1 if share >= PLANE_SHARE and count >= 32 else 0
    terms = _poly_terms(*small.shape)[:, :(1, 3, 6)[degree]]  # flat, plane or quadratic
    coef, resid = np.array([centre], np.float64), values - np.float32(centre)
    for _ in range(FIT_ROUNDS if degree else 0):  # a flat level is the start's (a mean would drift into blur)
        previous = inliers
        a = terms[inliers]  # (n, k); normal equations: a kxk solve, 100x faster than lstsq here
        k = a.shape[1]
        normal = (a.T @ a).astype(np.float64) + 1e-6 * np.eye(k)  # the ridge keeps 1-pixel images solvable
        coef = np.linalg.solve(normal, (a.T @ values[inliers]).astype(np.float64))
        resid = values - terms @ coef.astype(np.float32)
        sigma = imageops.mad_sigma(resid[inliers])
        inliers = allowed & (np.abs(resid) <= max(FIT_SIGMAS * sigma, 2.0))
        if not inliers.any() or np.array_equal(inliers, previous):  # converged (at once for a clean canvas)
            break
    floor = 3.0 * sigma + 2.0
    dark = float(np.maximum(-resid - floor, 0).sum()) >= float(np.maximum(resid - floor, 0).sum())
    paper = values[inliers] if inliers.any() else values
    # Between the paper's own darkest and lightest: never dipping into the ink between its pieces.
    level = np.clip(_quadratic(np.pad(coef, (0, 6 - len(coef))), h, w), paper.min(), paper.max())
    return level, dark


def _paper_start(small: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(h, w) small grey copy -> (level, sigma, the pixels that may be paper (h*w,) bool).

    Otsu splits the image into two grey classes and `paper_is_light` names the paper's. Its
    flat pixels (no blurred ink edge runs through them) give the paper's level and noise.
    When the ink's class lies TWO_LEVELS of that noise away, the image is ink on paper
    (however blurred) and only the paper's class may be paper. Anything else (paper alone,
    noise, a gradient) starts from the median, which is paper when paper is the majority.
    """
    values = small.ravel()
    light = small >= imageops.otsu(values)  # (h, w)
    paper = light.ravel() if paper_is_light(light) else ~light.ravel()
    if paper.any() and not paper.all():
        middle, ink = imageops.median(values[paper]), imageops.median(values[~paper])
        gy, gx = np.gradient(small) if min(small.shape) > 1 else (np.zeros_like(small),) * 2
        core = paper & (np.hypot(gx, gy).ravel() <= FLAT * abs(middle - ink))  # (h*w,) flat paper
        if core.sum() < max(4, CORE_SHARE * values.size):  # all blurred: its part farthest from the ink
            far = imageops.quantile(values[paper], OUTER if middle > ink else 1.0 - OUTER)
            core = paper & ((values >= far) if middle > ink else (values <= far))
        if core.sum() >= 2:
            level, spread = imageops.median(values[core]), imageops.mad_sigma(values[core])
            if abs(level - imageops.median(values[~paper])) >= TWO_LEVELS * max(spread, 1.0):
                return level, spread, paper
    return imageops.median(values), imageops.mad_sigma(values), np.ones(values.shape, bool)


def paper_is_light(light: np.ndarray) -> bool:
    """Of an image's two grey classes ((h, w) bool: the light one), is the light one paper?

    The class covering most of the image's outer frame: even in a tight crop the ink touches
    the edges only where its strokes end. But a class covering most of the image while the
    frame is the other's is a sheet photographed with the desk all around it. When the
    frame is split evenly, light paper (the usual photo or scan) unless the light class
    clearly is the minority.
    """
    share = float(light.mean())
    framed = float(imageops.frame(light.astype(np.float32), 1).mean())
    if share >= SHEET and framed <= ENCLOSED:
        return True  # a light sheet inside a dark frame
    if share <= 1.0 - SHEET and framed >= 1.0 - ENCLOSED:
        return False  # a dark slate on a light table
    if framed >= 0.5 + FRAME_DECISIVE or framed <= 0.5 - 2 * FRAME_DECISIVE:  # dark paper needs more
        return framed > 0.5
    return share > DARK_PAPER  # light paper unless the light class is clearly the ink


@lru_cache(maxsize=16)
def _poly_terms(h: int, w: int) -> np.ndarray:
    """(h*w, 6) quadratic terms 1, x, y, x^2, xy, y^2 of pixel centres in [-1, 1]."""
    y, x = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                       indexing="ij")
    x, y = x.ravel(), y.ravel()
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _quadratic(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    """The fitted surface c0 + c1 x + c2 y + c3 x^2 + c4 xy + c5 y^2 on an (h, w) grid."""
    c = coef.astype(np.float32)
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]  # (h, 1)
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]  # (1, w)
    return (c[0] + c[2] * y + c[5] * y * y) + (c[1] + c[3] * x + c[4] * y) * x


def border_background(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W) grey -> (paper level (H, W), object is dark) for objects, not digits.

    A garment may cover most of its photo, so the paper is not the majority: its level is
    the median of the image's outer frame (2 px), the object darker or lighter than that.
    """
    level = imageops.median(imageops.frame(gray))
    return np.full(gray.shape, level, dtype=np.float32), float(gray.mean()) <= level


def _rulings(ink: np.ndarray, contrast: float) -> np.ndarray | None:
    """The ink of a notebook's ruled lines or grid paper, (H, W), or None when there is none.

    A ruling runs across the whole image (a row's 10th percentile is its level: high only
    where ink covers 90% of the row), is thin (rows 3 away hold under half of it) and
    fainter than the writing (under 0.6 of the contrast) - which spares a "1" drawn from
    edge to edge.
    """
    if min(ink.shape) < 48:
        return None

    def thin(level: np.ndarray) -> np.ndarray:
        pad = np.pad(level, 3, mode="edge")
        ridge = level - np.maximum(pad[:-6], pad[6:])
        return np.where((ridge > 0.5 * level) & (level < 0.6 * contrast), level, 0.0).astype(np.float32)

    rows, cols = ink[:, ::3], ink[::3, :]  # every third column / row is enough
    row_level = thin(np.partition(rows, rows.shape[1] // 10, axis=1)[:, rows.shape[1] // 10])  # (H,)
    col_level = thin(np.partition(cols, cols.shape[0] // 10, axis=0)[cols.shape[0] // 10])  # (W,)
    if not (row_level.any() or col_level.any()):
        return None
    return row_level[:, None] + col_level[None, :]


def _components(mask: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The digit's parts of a (H, W) ink mask -> (coarse keep mask, cell size), or None.

    Found on a coarse grid (cells of `cell` px, a few thousand cells at most): a cell holds
    ink if any of its pixels does, and touching cells are one component, so strokes a few
    pixels apart join.
    """
    h, w = mask.shape
    cell = -(-max(h, w) // SMALL_SIDE)
    ph, pw = -(-h // cell) * cell, -(-w // cell) * cell

    def per_cell(values: np.ndarray) -> np.ndarray:  # (H, W) -> (ph/cell, pw/cell) sums
        full = np.zeros((ph, pw), dtype=np.float32)
        full[:h, :w] = values
        return full.reshape(ph, pw // cell, cell).sum(2).reshape(ph // cell, cell, pw // cell).sum(1)

    coarse = per_cell(np.where(mask, mass, 0.0))  # ink mass per cell
    keep = _keep_components(coarse > 0, coarse, per_cell(mask) / (cell * cell))
    return None if keep is None else (keep, cell)


def _keep_components(mask: np.ndarray, mass: np.ndarray, cover: np.ndarray) -> np.ndarray | None:
    """(h, w) coarse ink mask, ink mass and ink share of each cell -> the digit's parts, or None.

    The heaviest component is the digit; another is kept when heavy (a stroke the pen
    lifted from) or light but close (a broken stroke), and dropped when it is speckle.
    Not the digit (unless nothing else is there): a ruling line crossing the page (touches
    two opposite borders, thin), the desk around a photographed sheet (touches two or more
    borders and is solid, or runs along most of the border). A tightly cropped digit touches
    all four borders, but only where its strokes end.
    """
    ys, xs = np.nonzero(mask)
    ids, inv = np.unique(imageops.label(ys, xs, mask.shape), return_inverse=True)
    n, h, w = len(ids), *mask.shape
    weight = np.bincount(inv, weights=mass[ys, xs], minlength=n)
    top, left = np.full(n, h), np.full(n, w)
    bottom, right = np.zeros(n, int), np.zeros(n, int)
    np.minimum.at(top, inv, ys), np.minimum.at(left, inv, xs)
    np.maximum.at(bottom, inv, ys + 1), np.maximum.at(right, inv, xs + 1)
    at_top, at_bottom, at_left, at_right = top == 0, bottom == h, left == 0, right == w
    ruling = ((at_left & at_right & (bottom - top <= max(1, 0.08 * h)))
              | (at_top & at_bottom & (right - left <= max(1, 0.08 * w))))
    fill = np.bincount(inv, weights=cover[ys, xs], minlength=n) / ((bottom - top) * (right - left))
    on_border = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
    border = np.bincount(inv[on_border], minlength=n) / max(2 * (h + w) - 4, 1)  # share of the border
    borders = at_top.astype(int) + at_bottom + at_left + at_right
    desk = (borders >= 2) & ((fill >= DESK_FILL) | (border >= DESK_FRAME))
    if n > 1:
        weight = np.where(ruling | desk, 0.0, weight)
    main = int(np.argmax(weight))
    if weight[main] <= 0:
        return None
    size = max(bottom[main] - top[main], right[main] - left[main])
    gap = np.maximum(np.maximum(top[main] - bottom, top - bottom[main]),
                     np.maximum(left[main] - right, left - right[main]))  # <= 0 when boxes overlap
    keep = (((weight >= 0.2 * weight[main]) & (gap <= 0.6 * size))
            | ((weight >= 0.02 * weight[main]) & (gap <= 0.2 * size + 1))) & (weight > 0)
    out = np.zeros_like(mask)
    out[ys[keep[inv]], xs[keep[inv]]] = True
    return out


def _soft_crop(ink: np.ndarray, mask: np.ndarray, keep: np.ndarray, cell: int, noise: float,
               mode: Mode) -> tuple[np.ndarray, tuple[int, int]]:
    """The kept components' box (+2 px) as soft ink in [0, 1] (`soft_ink`) -> (array, (top, left) offset)."""
    rows, cols = np.nonzero(keep.any(1))[0], np.nonzero(keep.any(0))[0]
    y0, x0 = max(rows[0] * cell - 2, 0), max(cols[0] * cell - 2, 0)
    y1, x1 = min((rows[-1] + 1) * cell + 2, mask.shape[0]), min((cols[-1] + 1) * cell + 2, mask.shape[1])
    cells = imageops.pad(np.repeat(np.repeat(keep, cell, 0), cell, 1), 2)  # cells back to pixels, +2 px margin
    keep = cells[y0 + 2:y1 + 2, x0 + 2:x1 + 2] & mask[y0:y1, x0:x1]  # (h, w) the digit's ink pixels
    return soft_ink(ink[y0:y1, x0:x1], keep, noise, mode), (y0, x0)


def soft_ink(ink: np.ndarray, own: np.ndarray, noise: float, mode: Mode) -> np.ndarray:
    """(h, w) ink (grey levels) and the digit's own ink pixels (bool) -> soft ink in [0, 1].

    Only ink within 1 px of its own pixels counts (its anti-aliased edge, not the speckle
    beside it). Paper noise is taken off and, for digits, the stroke cores are saturated:
    MNIST's strokes are 255 with grey anti-aliased edges.
    """
    near = imageops.max_filter(own.astype(np.float32), 1) > 0
    level = imageops.quantile(ink[own], mode.saturate_at)
    floor = mode.noise_sigmas * noise
    soft = np.clip((ink - floor) / max(level - floor, 1e-3), 0.0, 1.0)
    return np.where(near, soft, 0.0).astype(np.float32)


def _normalise_strokes(crop: np.ndarray, box: int) -> tuple[np.ndarray, float, float]:
    """Bring the stroke width into MNIST's range: -> (crop, width before, change), 20-box px.

    Works at 4x the final size (long side 4*box, padded so a thicker stroke is not cut),
    where one step of dilation changes the final width by half a pixel.
    """
    width = _stroke_width(crop) * box / max(crop.shape)
    target = _target_width(width)
    if abs(target - width) < 0.25 or width == 0:  # less than half a dilation step: leave it
        return crop, width, 0.0
    big = imageops.pad(_fit(crop, 4 * box), 4 * 4)  # (<=4box+32, <=4box+32)
    big = _change_width(big, (target - width) * 4)
    found = imageops.bbox(big)
    if found is None:
        return crop, width, 0.0
    top, bottom, left, right = found
    return big[top:bottom, left:right], width, target - width


def _target_width(width: float) -> float:
    """The stroke width to aim for (20-box px): unchanged inside MNIST's range, else moved
    past the nearer limit by half the distance (a hairline becomes 2.3 px, not 1.8)."""
    if width < WIDTH_LO:
        return min(WIDTH_LO + 0.5 * (WIDTH_LO - width), 2.4)
    if width > WIDTH_HI:
        return max(WIDTH_HI - 0.5 * (width - WIDTH_HI), 3.2)
    return width


def _stroke_width(v: np.ndarray) -> float:
    """Mean width of the strokes in a soft ink image: 2 * area / length of the outline.

    The outline's length is the total gradient magnitude (each crossing of a stroke edge
    adds 1, at any blur), measured with a 2 px black margin so edges on the crop count.
    """
    gy, gx = np.gradient(imageops.pad(v, 2))  # central differences: nearly isotropic on a staircase
    edge = float(np.sqrt(gx * gx + gy * gy).sum())
    return 2.0 * float(v.sum()) / edge if edge > 0 else 0.0


def _change_width(v: np.ndarray, delta: float) -> np.ndarray:
    """Thicken (delta > 0) or thin a soft ink image by about delta pixels of width.

    Grey dilation/erosion with a 3x3 square alternated with a 3x3 cross: an octagon, close
    enough to a round pen.
    """
    sign = 1.0 if delta > 0 else -1.0  # erosion is dilation of the negative
    out = sign * v
    for i in range(int(round(abs(delta) / 2))):  # each step adds a pixel on both sides
        out = imageops.max_filter(out, 1, cross=bool(i % 2))
    return sign * out


def _fit(v: np.ndarray, box: int) -> np.ndarray:
    """A cropped (h, w) ink image -> long side `box`, aspect ratio kept, anti-aliased."""
    h, w = v.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.clip(imageops.resize(v, size), 0.0, 1.0)


def _place(digit: np.ndarray, center_by_mass: bool) -> np.ndarray:
    """Paste an (h, w) image (h, w <= OUT) into (OUT, OUT): by centre of mass, else by box."""
    h, w = digit.shape
    if center_by_mass and digit.sum() > 0:
        ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
        total = float(digit.sum())
        cy, cx = float(digit.sum(1) @ ys) / total, float(digit.sum(0) @ xs) / total
        top, left = round(CENTRE - cy), round(CENTRE - cx)
    else:
        top, left = (OUT - h) // 2, (OUT - w) // 2
    top, left = min(max(top, 0), OUT - h), min(max(left, 0), OUT - w)  # whole digit stays inside
    out = np.zeros((OUT, OUT), dtype=np.float32)
    out[top:top + h, left:left + w] = digit
    return out
