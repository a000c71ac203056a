"""A user's image -> the (1, 28, 28) white-on-black tensor the models saw in training.

MNIST digits are white on black, fitted into a 20x20 box by their aspect ratio with
anti-aliasing and placed in 28x28 so their centre of mass is at the centre. A photo, a scan
or a canvas drawing is none of that, so `preprocess` rebuilds it step by step, all as array
operations on an image first reduced to at most WORK_SIDE pixels:

  grayscale (transparency counts as paper) -> the paper as a smooth surface fitted
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

import warnings

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lenet import imageops  # called as imageops.NAME: bbox, label, pad are also local names here
from lenet.errors import LenetError

MAX_PIXELS = 40_000_000  # refuse larger images (decompression bombs): 40 MP is a big phone photo
WORK_SIDE = 200  # long side the analysis runs at; a digit filling 1/5 of a photo keeps 40 px
SMALL_SIDE = 48  # long side of the small copies the paper is fitted on and components found on
OUT, BOX = 28, 20  # MNIST: a 20x20 box inside 28x28
CENTRE = 14.0  # MNIST's centre of mass sits on pixel index 14 (measured: 13.99, 14.01)
# Stroke width as 2*sum(v)/sum(|grad v|) in 20-box pixels: MNIST's 1st..99th percentile is
# 1.8..4.4 (median 2.5). Outside [WIDTH_LO, WIDTH_HI] a stroke is thickened or thinned,
# continuously: just past the limit to the limit, far past it further in (see _target_width).
WIDTH_LO, WIDTH_HI = 1.8, 4.4
MIN_CONTRAST = 16.0  # grey levels (of 255) between ink and paper below which nothing is there
NO_DIGIT = "no digit found"


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


def open_image(source: str | Path | bytes, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a file or bytes into a loaded PIL image, or a LenetError naming the file.

    Refuses missing files, directories, non-images, truncated data and images over
    `max_pixels` (checked from the header, before decoding). Animated GIF/WebP: the first
    frame. EXIF rotation is applied. Big JPEGs are decoded at 1/2..1/8 scale (DCT scaling):
    preprocessing needs no more than WORK_SIDE pixels and this is most of the decode time.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = name or ("upload" if is_bytes else str(source))
    if is_bytes:
        if len(source) == 0:
            raise LenetError(f"{label}: empty, not an image")
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise LenetError(f"{label}: is a directory, not an image")
        if not path.is_file():
            raise LenetError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise LenetError(f"{label}: empty file, not an image")
        try:
            fp = path.open("rb")  # Pillow reads only the header of a non-image, not the whole file
        except OSError as exc:
            raise LenetError(f"{label}: cannot read ({exc.strerror or exc})") from None
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse by our own limit
        return _decode(fp, label, max_pixels)


def _decode(fp, label: str, max_pixels: int) -> Image.Image:
    """open_image's work on an open binary file."""
    too_large = f"{label}: image too large (over {max_pixels:,} pixels)"
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError:
        raise LenetError(too_large) from None
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
        raise LenetError(f"{label}: not an image (or a format Pillow cannot read)") from None
    width, height = img.size
    if width * height > max_pixels:
        raise LenetError(f"{label}: image too large ({width}x{height} = {width * height:,} pixels, "
                         f"limit {max_pixels:,})")
    if width < 1 or height < 1:
        raise LenetError(f"{label}: image has no pixels")
    if img.format == "JPEG" and max(width, height) > 2 * WORK_SIDE:
        scale = 2 * WORK_SIDE / max(width, height)  # draft keeps at least this size
        img.draft(img.mode, (int(width * scale) + 1, int(height * scale) + 1))
    try:
        img.seek(0)  # first frame of an animation
        img.load()
        return upright(img)
    except Image.DecompressionBombError:
        raise LenetError(too_large) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        why = str(exc).strip() or type(exc).__name__
        raise LenetError(f"{label}: truncated or corrupt image ({why})") from None


EXIF_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos) without re-encoding the EXIF block, which
    ImageOps.exif_transpose does and which fails on malformed tags."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Truncated File Read" on corrupt EXIF
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any EXIF problem: take the image as stored
        orientation = 1
    method = EXIF_ORIENTATION.get(orientation)
    return img.transpose(method) if method is not None else img


def to_gray(img: Image.Image) -> np.ndarray:
    """Any mode -> (H, W) float32 grey levels 0..255 at most WORK_SIDE on the long side.

    Reduced first (integer box reduction: cheap, anti-aliased) when the mode allows it.
    Transparency counts as paper: transparent pixels take the colour that contrasts with
    the opaque ones when those are few (strokes on a transparent canvas), or the opaque
    pixels' median when they are many (a cut-out photo of paper).
    """
    if img.mode in ("La", "RGBa"):  # premultiplied alpha
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    elif img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.float32) / 257.0).astype(np.float32), "F")
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 1.0
        img = Image.fromarray(arr / (257.0 if top > 255 else 1.0), "F")
    factor = -(-max(img.size) // WORK_SIDE)  # ceil

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
    return np.asarray(img if img.mode == "F" else img.convert("L"), dtype=np.float32)


def preprocess(img: Image.Image, center_by_mass: bool = True, *, digits: bool = True) -> Preprocessed:
    """A PIL image of a digit (any size, mode, polarity) -> Preprocessed (1, 28, 28) or None.

    digits=True follows MNIST: strokes saturated to white, width normalised, 20x20 box.
    digits=False follows Fashion-MNIST: the paper is the image's border (an object may
    fill most of the picture), grey levels are kept, no stroke change, the object's long
    side fills all 28 pixels; pass center_by_mass=False with it (Fashion-MNIST centres the
    box, not the mass).
    """
    gray = to_gray(img)  # (H, W), long side <= WORK_SIDE
    ink, smooth, dark, noise, noise_s = _ink(gray, digits)  # (H, W) each

    def nothing(why: str, contrast: float = 0.0) -> Preprocessed:
        return Preprocessed(None, f"{NO_DIGIT}: {why}", dark, contrast=contrast, noise=noise)

    # Contrast: the strong class (Otsu) of what stands out of the noise. Without Otsu, a
    # faint gradient left over on a big sheet would outvote a small digit.
    strong = smooth[smooth > max(4.0 * noise_s, 4.0)]
    contrast = imageops.median(strong[strong >= imageops.otsu(strong)]) if strong.size >= 3 else 0.0
    if contrast < max(MIN_CONTRAST, 8.0 * noise_s):
        return nothing("no ink stands out from the paper", contrast)
    lines = _rulings(smooth, contrast) if digits else None
    if lines is not None:
        ink, smooth = np.maximum(ink - lines, 0.0), np.maximum(smooth - lines, 0.0)
    mask = smooth > max(4.0 * noise_s, (0.4 if digits else 0.1) * contrast)  # (H, W) ink pixels
    kept = _components(mask, smooth)
    if kept is None:
        return nothing("only ruling lines or the desk", contrast)
    soft, (y0, x0) = _soft_crop(ink, mask, *kept, noise, digits)  # (h, w) in [0, 1], its offset
    found = imageops.bbox(soft)
    if found is None:
        return nothing("the ink is too faint", contrast)
    top, bottom, left, right = found
    if max(bottom - top, right - left) < max(2, 0.02 * max(gray.shape)):
        return nothing("only a speck", contrast)
    crop = soft[top:bottom, left:right]
    scale = max(img.size) / max(gray.shape)  # input pixels per working pixel
    bbox = (int((x0 + left) * scale), int((y0 + top) * scale),
            int(np.ceil((x0 + right) * scale)), int(np.ceil((y0 + bottom) * scale)))

    width = change = 0.0
    if digits:
        crop, width, change = _normalise_strokes(crop, BOX)
    out = _place(_fit(crop, BOX if digits else OUT), center_by_mass)  # (28, 28)
    return Preprocessed(torch.from_numpy(out)[None], None, dark, bbox, contrast, noise, width, change)


def to_png(image: torch.Tensor) -> bytes:
    """A (1, 28, 28) or (28, 28) image in [0, 1] -> PNG bytes (8-bit grey, white on black)."""
    arr = (image.detach().reshape(image.shape[-2], image.shape[-1]).clamp(0, 1) * 255).round()
    buf = io.BytesIO()
    Image.fromarray(arr.to(torch.uint8).numpy(), "L").save(buf, "PNG")
    return buf.getvalue()


def _ink(gray: np.ndarray, digits: bool = True) -> tuple[np.ndarray, np.ndarray, bool, float, float]:
    """(H, W) grey -> (ink, smoothed ink, ink is dark, paper noise, noise of smoothed ink).

    Ink is how far a pixel is from the paper towards the ink's side, in grey levels.
    The smoothed copy (3x3 mean; not for small clean images such as MNIST itself, where
    every pixel counts) decides what is ink: it has a third of the noise, or half for
    JPEG noise, which is correlated between neighbours.
    """
    paper, dark = background(gray) if digits else border_background(gray)
    resid = gray - paper
    paper_sample = (resid[::3, ::3] if gray.size > 9000 else resid) if digits else imageops.frame(resid)
    noise = max(imageops.mad_sigma(paper_sample), 0.5)
    ink = np.maximum(-resid if dark else resid, 0.0)  # (H, W) >= 0
    if noise < 1.0 or (min(gray.shape) < 48 and noise < 3.0):  # a canvas, MNIST: nothing to smooth
        return ink, ink, dark, noise, noise
    return ink, imageops.box3(ink), dark, noise, max(noise / 2.0, 0.5)


def background(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W) grey -> (paper level (H, W), ink is dark).

    The paper is a smooth surface (tint, lighting gradient, vignette): a quadratic in x and
    y fitted to a small copy of the image by trimmed least squares. It starts from the
    pixels near the median and each round refits on those within 2.5 sigma of the last fit,
    so the ink is left out whichever its polarity, as long as paper is the majority.
    Polarity: the side with more mass beyond 3 sigma of the fit is the ink.
    """
    h, w = gray.shape
    factor = -(-max(h, w) // SMALL_SIDE)
    small = imageops.resize(gray, (max(1, w // factor), max(1, h // factor)))  # (h', w') area-averaged
    values = small.ravel()
    terms = _poly_terms(*small.shape)  # (h'*w', 6)
    sigma = imageops.mad_sigma(values)  # start from a flat sheet: the median is paper when paper is the majority
    inliers = np.abs(values - imageops.median(values)) <= max(2.5 * sigma, 2.0)
    for _ in range(4):
        previous = inliers
        a = terms[inliers]  # (n, 6); normal equations: a 6x6 solve, 100x faster than lstsq here
        normal = (a.T @ a).astype(np.float64) + 1e-6 * np.eye(6)  # the ridge keeps 1-pixel images solvable
        coef = np.linalg.solve(normal, (a.T @ values[inliers]).astype(np.float64))
        resid = values - terms @ coef.astype(np.float32)
        sigma = imageops.mad_sigma(resid[inliers])
        inliers = np.abs(resid) <= max(2.5 * sigma, 2.0)
        if np.array_equal(inliers, previous):  # converged (at once for a clean canvas)
            break
    floor = 3.0 * sigma + 2.0
    dark = float(np.maximum(-resid - floor, 0).sum()) >= float(np.maximum(resid - floor, 0).sum())
    return _quadratic(coef, h, w), dark


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
    coarse = np.zeros((ph, pw), dtype=np.float32)
    coarse[:h, :w] = np.where(mask, mass, 0.0)
    coarse = coarse.reshape(ph, pw // cell, cell).sum(2).reshape(ph // cell, cell, pw // cell).sum(1)  # ink mass
    keep = _keep_components(coarse > 0, coarse)
    return None if keep is None else (keep, cell)


def _keep_components(mask: np.ndarray, mass: np.ndarray) -> np.ndarray | None:
    """(h, w) coarse ink mask and ink mass -> the mask of the digit's parts, or None.

    The heaviest component is the digit; another is kept when heavy (a stroke the pen
    lifted from) or light but close (a broken stroke), and dropped when it is speckle.
    Not the digit (unless nothing else is there): a ruling line crossing the page (touches
    two opposite borders, thin), the desk around a photographed sheet (touches three
    borders, or fills a corner: two adjacent borders and most of its box).
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
    fill = np.bincount(inv, minlength=n) / ((bottom - top) * (right - left))
    corner = (at_top | at_bottom) & (at_left | at_right) & (fill > 0.6)
    desk = (at_top.astype(int) + at_bottom + at_left + at_right >= 3) | corner
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
               digits: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """The kept components' box (+2 px) as soft ink in [0, 1] -> (array, (top, left) offset).

    Only ink within 1 px of a kept mask pixel counts (its anti-aliased edge, not the
    speckle beside it). Paper noise is taken off and, for digits, the stroke cores are
    saturated: MNIST's strokes are 255 with grey anti-aliased edges.
    """
    rows, cols = np.nonzero(keep.any(1))[0], np.nonzero(keep.any(0))[0]
    y0, x0 = max(rows[0] * cell - 2, 0), max(cols[0] * cell - 2, 0)
    y1, x1 = min((rows[-1] + 1) * cell + 2, mask.shape[0]), min((cols[-1] + 1) * cell + 2, mask.shape[1])
    cells = imageops.pad(np.repeat(np.repeat(keep, cell, 0), cell, 1), 2)  # cells back to pixels, +2 px margin
    keep = cells[y0 + 2:y1 + 2, x0 + 2:x1 + 2] & mask[y0:y1, x0:x1]  # (h, w) the digit's ink pixels
    near = imageops.max_filter(keep.astype(np.float32), 1) > 0
    ink = ink[y0:y1, x0:x1]
    level = imageops.quantile(ink[keep], 0.75 if digits else 0.99)
    floor = 2.5 * noise if digits else 0.0
    soft = np.clip((ink - floor) / max(level - floor, 1e-3), 0.0, 1.0)
    return np.where(near, soft, 0.0).astype(np.float32), (y0, x0)


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
