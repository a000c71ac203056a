"""Generated images of things that are not digits, for calibrating and testing "not_a_digit".

    from lenet.synthetic import nondigits
    images, kinds = nondigits(1000, seed=0)     # PIL images, and what each shows

Kinds (balanced): dots, blobs, filled shapes, scribbles, crosses, stars and asterisks, hash
signs, zigzags and letters that look like no digit. Each is drawn the way people hand us
images: on a canvas or paper of 64..320 px, black, coloured or light ink, pen widths from a
hairline to a marker, sometimes noisy or blurred. Image i depends only on (seed, i), so a
calibration split and a test split are two seeds. Letters come from the fonts found on
this machine (matplotlib's DejaVu at least).

    from lenet.synthetic import typed_digits
    images, labels = typed_digits(1000, seed=0)  # (28, 28) uint8 MNIST-style digits from fonts

Typed digits are the other side of the same coin: letters come from fonts, so a detector
that saw only handwritten digits would learn "drawn by a font = not a digit" and refuse
printed and typed digits (receipts, screenshots, small scans of forms).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("dot", "blob", "filled", "scribble", "cross", "star", "hash", "zigzag", "letter")
# Letters that no one would read as a digit (O, I, l, Z, S, b, g, q, B, G, T... left out).
LETTERS = "ACEFHKMNPRUVWXYacdefhkmnprtuvwxy"
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))


def nondigits(n: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """n images of non-digits, kinds in turn, and the kind of each."""
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    return [draw_nondigit(np.random.default_rng([seed, i]), kind) for i, kind in enumerate(kinds)], kinds


def draw_nondigit(rng: np.random.Generator, kind: str) -> Image.Image:
    """One non-digit of `kind` on a canvas of random size, ink and paper."""
    side = int(rng.integers(64, 321))
    mask = Image.new("L", (side, side), 0)  # 255 where the ink is
    size = side * rng.uniform(0.3, 0.85)  # the shape's extent
    cx, cy = side / 2 + rng.uniform(-0.15, 0.15) * side, side / 2 + rng.uniform(-0.15, 0.15) * side
    pen = max(1, int(side * rng.uniform(0.015, 0.09)))
    SHAPES[kind](ImageDraw.Draw(mask), rng, cx, cy, size, pen)
    return _on_paper(rng, mask)


def _dot(d, rng, cx, cy, size, pen):
    r = size * rng.uniform(0.03, 0.2)
    d.ellipse((cx - r, cy - r * rng.uniform(0.7, 1.3), cx + r, cy + r), fill=255)


def _blob(d, rng, cx, cy, size, pen):
    n = int(rng.integers(7, 16))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = size / 2 * rng.uniform(0.45, 1.0, n)
    d.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=255)


def _filled(d, rng, cx, cy, size, pen):
    w, h = size / 2 * rng.uniform(0.5, 1.0), size / 2 * rng.uniform(0.5, 1.0)
    shape = rng.integers(3)
    if shape == 0:
        d.rectangle((cx - w, cy - h, cx + w, cy + h), fill=255)
    elif shape == 1:
        d.ellipse((cx - w, cy - h, cx + w, cy + h), fill=255)
    else:
        d.polygon([(cx, cy - h), (cx - w, cy + h), (cx + w, cy + h)], fill=255)


def _scribble(d, rng, cx, cy, size, pen):
    n = int(rng.integers(12, 40))
    pts = np.cumsum(rng.normal(0, size * 0.18, (n, 2)), axis=0)
    pts = (pts - pts.mean(0)) / max(float(np.abs(pts).max()), 1e-6) * size / 2 + (cx, cy)
    d.line([tuple(p) for p in pts], fill=255, width=pen, joint="curve")


def _cross(d, rng, cx, cy, size, pen):
    turn = rng.choice([0.0, math.pi / 4]) + rng.uniform(-0.2, 0.2)
    for k in range(2):
        a = turn + k * math.pi / 2
        dx, dy = size / 2 * math.cos(a), size / 2 * math.sin(a)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=pen)


def _star(d, rng, cx, cy, size, pen):
    points = int(rng.integers(5, 9))
    turn = rng.uniform(0, 2 * math.pi)
    if rng.random() < 0.5:  # an asterisk: lines through the centre
        for k in range(points // 2 + 1):
            a = turn + k * math.pi / (points // 2 + 1)
            d.line([(cx - size / 2 * math.cos(a), cy - size / 2 * math.sin(a)),
                    (cx + size / 2 * math.cos(a), cy + size / 2 * math.sin(a))], fill=255, width=pen)
        return
    corners = [(cx + (size / 2 if k % 2 == 0 else size / 5) * math.cos(turn + k * math.pi / points),
                cy + (size / 2 if k % 2 == 0 else size / 5) * math.sin(turn + k * math.pi / points))
               for k in range(2 * points)]
    if rng.random() < 0.5:
        d.polygon(corners, fill=255)
    else:
        d.line(corners + corners[:1], fill=255, width=pen, joint="curve")


def _hash(d, rng, cx, cy, size, pen):
    h, lean = size / 2, rng.uniform(-0.2, 0.2) * size
    for off in (-size / 6, size / 6):
        d.line([(cx + off + lean / 2, cy - h), (cx + off - lean / 2, cy + h)], fill=255, width=pen)
        d.line([(cx - h, cy + off), (cx + h, cy + off)], fill=255, width=pen)


def _zigzag(d, rng, cx, cy, size, pen):
    n = int(rng.integers(4, 10))
    amp = size * rng.uniform(0.08, 0.3)
    xs = np.linspace(cx - size / 2, cx + size / 2, n)
    pts = [(float(x), cy + (amp if k % 2 else -amp)) for k, x in enumerate(xs)]
    if rng.random() < 0.5:
        pts = [(y - cy + cx, x - cx + cy) for x, y in pts]  # upright
    d.line(pts, fill=255, width=pen, joint="curve")


def _letter(d, rng, cx, cy, size, pen):
    fonts = font_files()
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), max(8, int(size)))
    d.text((cx, cy), LETTERS[int(rng.integers(len(LETTERS)))], fill=255, font=font, anchor="mm")


SHAPES = {"dot": _dot, "blob": _blob, "filled": _filled, "scribble": _scribble, "cross": _cross,
          "star": _star, "hash": _hash, "zigzag": _zigzag, "letter": _letter}


@lru_cache(maxsize=1)
def font_files() -> list[Path]:
    """TrueType/OpenType fonts on this machine, matplotlib's DejaVu first (always there)."""
    import matplotlib

    found = sorted(Path(matplotlib.get_data_path(), "fonts", "ttf").glob("DejaVuSans*.ttf"))
    for folder in FONT_DIRS:
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))[:200]
    return found


def typed_digits(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """n digits (digit i % 10) drawn by the fonts on this machine that have digit glyphs,
    MNIST-style: white on black (28, 28) uint8, the ink fitted in a 20 px box and centred by
    its mass; a random weight (thinner or bolder), slant and rotation each."""
    fonts = digit_fonts()
    return [typed_digit(np.random.default_rng([seed, i]), i % 10, fonts) for i in range(n)], [i % 10 for i in range(n)]


def typed_digit(rng: np.random.Generator, digit: int, fonts: list[Path]) -> np.ndarray:
    """One digit in a random font of `fonts`, weight, slant and turn -> (28, 28) uint8 white on black."""
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), 96)
    mask = Image.new("L", (192, 192), 0)
    ImageDraw.Draw(mask).text((96, 96), str(digit), fill=255, font=font, anchor="mm")
    weight = rng.integers(3)  # as drawn, thinner, bolder (a 5 px filter on a ~96 px glyph)
    if weight == 2:
        mask = mask.filter(ImageFilter.MaxFilter(5))
    elif weight == 1:  # thinner, unless that erases a light font's hairlines
        thin = mask.filter(ImageFilter.MinFilter(5))
        if np.asarray(thin, np.float32).sum() > 0.5 * np.asarray(mask, np.float32).sum():
            mask = thin
    slant = rng.uniform(-0.25, 0.25)  # x shifts by slant * (y - centre): italic or back-slanted
    mask = mask.transform(mask.size, Image.Transform.AFFINE, (1, slant, -slant * 96, 0, 1, 0),
                          Image.Resampling.BILINEAR)
    mask = mask.rotate(rng.uniform(-8, 8), Image.Resampling.BILINEAR)
    box = mask.getbbox() or (0, 0, mask.width, mask.height)
    ink = mask.crop(box)
    scale = 20 / max(ink.size)
    ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.Resampling.LANCZOS)
    a = np.asarray(ink, np.float32)  # (h, w) <= (20, 20)
    ys, xs = np.indices(a.shape)
    cy, cx = (ys * a).sum() / max(a.sum(), 1e-6), (xs * a).sum() / max(a.sum(), 1e-6)
    top, left = int(np.clip(round(14 - cy), 0, 28 - a.shape[0])), int(np.clip(round(14 - cx), 0, 28 - a.shape[1]))
    out = np.zeros((28, 28), np.uint8)
    out[top:top + a.shape[0], left:left + a.shape[1]] = np.clip(a, 0, 255).astype(np.uint8)
    return out


@lru_cache(maxsize=1)
def digit_fonts() -> list[Path]:
    """The fonts of font_files() whose digits are glyphs of their own (not a missing-glyph box)."""
    def mask(font: ImageFont.FreeTypeFont, text: str) -> bytes:
        img = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(img).text((32, 32), text, fill=255, font=font, anchor="mm")
        return img.tobytes()

    found = []
    for path in font_files():
        try:
            font = ImageFont.truetype(str(path), 40)
            shapes = {mask(font, str(d)) for d in range(10)}
        except OSError:
            continue
        if len(shapes) == 10:  # ten different shapes: real digits
            found.append(path)
    return found


def _on_paper(rng: np.random.Generator, mask: Image.Image) -> Image.Image:
    """An ink mask (L, 255 = ink) -> an RGB image: dark ink on light paper mostly, light on
    dark sometimes, a little noise or blur sometimes."""
    m = np.asarray(mask, np.float32)[..., None] / 255.0  # (S, S, 1) ink coverage
    if rng.random() < 0.8:
        paper, ink = rng.uniform(215, 255, 3), rng.uniform(0, 90, 3)
    else:
        paper, ink = rng.uniform(0, 70, 3), rng.uniform(190, 255, 3)
    img = paper * (1 - m) + ink * m
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(1, 8), img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.2:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    return out


def compose_number(digits: list[np.ndarray], rng: np.random.Generator, touching: bool = False) -> Image.Image:
    """White-on-black (28, 28) uint8 digits -> one image of the number they make, dark ink on
    light paper, left to right: each digit cropped to its ink, scaled by 1.4..2.6, raised or
    lowered by up to 15% of its height; ink boxes 2..40% of a digit's height apart, or, with
    `touching`, every neighbour pair overlapping by 0..10% so their strokes may meet."""
    pieces = []
    for digit in digits:
        ys, xs = np.nonzero(digit > 0)
        crop = Image.fromarray(digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1], "L")
        scale = rng.uniform(1.4, 2.6)
        pieces.append(crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                                  Image.Resampling.BILINEAR))
    height = max(p.height for p in pieces)
    lifts = [int(rng.uniform(-0.15, 0.15) * height) for _ in pieces]
    gaps = [int(rng.uniform(-0.1, 0.0) * height) if touching else int(rng.uniform(0.02, 0.4) * height) + 2
            for _ in pieces[1:]]
    margin = height // 2
    width = sum(p.width for p in pieces) + sum(gaps) + 2 * margin
    canvas = np.zeros((height * 2 + 2 * margin, max(width, 1)), np.uint8)  # (H, W) white ink on black
    x = margin
    for k, piece in enumerate(pieces):
        y = margin + height // 2 + (height - piece.height) + lifts[k]  # bottoms on a wavy baseline
        region = canvas[y:y + piece.height, x:x + piece.width]
        np.maximum(region, np.asarray(piece), out=region)
        x += piece.width + (gaps[k] if k < len(gaps) else 0)
    return Image.fromarray(255 - canvas, "L")
