"""Realistic digit images made the way users make them, and the accuracy on them.

    python benchmarks/realistic_digits.py [--checkpoint C] [--n 500] [--seed 0] [--grid PNG]
    python benchmarks/realistic_digits.py --checkpoint fashion-mnist   # what a garment model flags

Four categories, each balanced over the ten digits, deterministic for a seed:
  fonts          digits in handwriting fonts (Debian's fonts-* packages, see FONT_FILES),
                 "photographed": random size, slant, rotation, position, pen colour and
                 width, tinted paper, uneven light, sometimes ruled lines, sensor noise,
                 blur, JPEG at quality 35..95, image 160..1200 px
  canvas         strokes drawn on a web canvas: jittered digit skeletons (several forms
                 per digit) with a round pen of random width; black on white, white on
                 black, coloured, or on a transparent canvas (RGBA PNG)
  scans          low-resolution scans: a font or stroke digit 12..28 px high, noise,
                 sometimes bilevel, sometimes upscaled again, JPEG
  light-on-dark  chalk on a blackboard, dark-mode notes: light ink on dark paper

  tight          cropped tightly: the ink touches 1..4 edges; sometimes an enlarged close-up
  scans-6-10px   digits 6..10 px high (11..16 px: scans-11-16px), enlarged 3..8x by a viewer
                 with any filter (nearest, bilinear, bicubic, Lanczos)

Prints, per category, the accuracy of our preprocessing and of the tutorials' bare
"resize to 28x28 and invert" with the same model, how many were "no digit found" and how
many refused (status not_a_digit or no_digit). Then generated non-digits (the share flagged:
any status but ok) and numbers of 2..8 MNIST test digits (whole numbers read right, apart
and touching; MNIST is fetched through lenet's offline chain). For a model of other classes
(--checkpoint fashion-mnist): the non-digits and MNIST digits it flags, and how much of its
own test set it refuses.
With fewer fonts installed it says so and uses what it finds (matplotlib's DejaVu at least):

    apt-get install fonts-bwht fonts-comic-neue fonts-dancingscript fonts-kaushanscript \
        fonts-breip fonts-dkg-handwriting fonts-humor-sans fonts-klee fonts-kristi \
        fonts-leckerli-one fonts-rufscript fonts-sjfonts fonts-tomsontalks fonts-yusei-magic
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CATEGORIES = ("fonts", "canvas", "scans", "light-on-dark", "tight", "scans-6-10px", "scans-11-16px")
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
# Debian package -> font files whose digits look handwritten (outlined and hatched
# fonts such as fonts-cabinsketch, fonts-femkeklaver, fonts-ecolier-court left out).
FONT_FILES = {
    "fonts-bwht": ["BecauseWeBuild-Regular.otf", "BecauseWeConnect-Regular.otf", "BecauseWeCreate-Regular.otf",
                   "BecauseWeLearn-Regular.otf", "BecauseWeMentor-Regular.otf", "BecauseWeOrganize-Regular.otf"],
    "fonts-comic-neue": ["ComicNeue-Regular.otf", "ComicNeue-Bold.otf", "ComicNeue-Italic.otf",
                         "ComicNeue-Light.otf", "ComicNeue-BoldItalic.otf", "ComicNeue-LightItalic.otf"],
    "fonts-dancingscript": ["DancingScript-Regular.otf", "DancingScript-Bold.otf"],
    "fonts-kaushanscript": ["KaushanScript-Regular.otf"],
    "fonts-breip": ["Breip.ttf"],
    "fonts-dkg-handwriting": ["dkg.ttf", "dkgBd.ttf", "dkgIt.ttf", "dkgBI.ttf"],
    "fonts-humor-sans": ["Humor-Sans.ttf"],
    "fonts-klee": ["KleeOne-Regular.ttf", "KleeOne-SemiBold.ttf"],
    "fonts-kristi": ["Kristi.ttf"],
    "fonts-leckerli-one": ["LeckerliOne-Regular.ttf"],
    "fonts-rufscript": ["Rufscript010.ttf"],
    "fonts-sjfonts": ["Delphine.ttf", "SteveHand.ttf"],
    "fonts-tomsontalks": ["TomsonTalks.ttf"],
    "fonts-yusei-magic": ["YuseiMagic-Regular.ttf"],
}
FALLBACK_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf"]

# Digit skeletons in a unit box (x right, y down): strokes of points, several forms each.
# ("arc", cx, cy, rx, ry, from_deg, to_deg) is an elliptical arc; angle -90 is the top.
SKELETONS = {
    0: [[("arc", .5, .5, .32, .46, -90, 270)], [("arc", .5, .5, .28, .46, -60, 300)]],
    1: [[(.5, .04), (.5, .96)], [(.3, .22), (.52, .04), (.52, .96)],
        [(.32, .2), (.52, .04), (.52, .96)], [(.55, .04), (.45, .96)]],
    2: [[("arc", .5, .3, .3, .26, -170, 20), (.18, .96), (.85, .96)],
        [("arc", .5, .3, .3, .26, -170, 30), (.2, .94), (.82, .9)]],
    3: [[("arc", .48, .27, .28, .23, -160, 90), ("arc", .48, .72, .32, .24, -90, 160)],
        [(.2, .06), (.78, .06), (.45, .42), ("arc", .48, .7, .32, .26, -80, 160)]],
    4: [[(.66, .96), (.66, .04), (.15, .66), (.88, .66)],
        [(.22, .04), (.16, .6), (.86, .6)], [(.66, .28), (.66, .96)]],
    5: [[(.8, .05), (.26, .05), (.22, .45), ("arc", .5, .68, .31, .27, -140, 150)],
        [(.26, .05), (.22, .46), ("arc", .5, .68, .31, .27, -140, 150)], [(.26, .05), (.82, .05)]],
    6: [[(.72, .04), (.45, .2), (.26, .48), ("arc", .5, .7, .27, .26, 180, 540)],
        [("arc", .82, .62, .6, .58, -112, -180), ("arc", .5, .7, .28, .25, 180, 530)]],
    7: [[(.14, .05), (.86, .05), (.42, .96)],
        [(.14, .12), (.2, .05), (.86, .05), (.48, .96)], [(.32, .5), (.78, .5)]],
    8: [[("arc", .5, .27, .25, .22, 90, 450), ("arc", .5, .72, .3, .24, -90, 270)],
        [("arc", .5, .27, .24, .22, 45, 405), ("arc", .5, .72, .31, .25, -90, 270)]],
    9: [[("arc", .5, .3, .28, .25, 0, 360), (.78, .3), (.74, .96)],
        [("arc", .5, .3, .28, .25, -10, 350), (.78, .32), ("arc", .38, .6, .4, .36, 0, 110)]],
}
# Each digit's forms: which of its strokes above are drawn together (a 4 open or closed,
# a 7 with or without a bar, a 1 with or without a flag, ...).
FORMS = {
    0: [[0], [1]], 1: [[0], [1], [2], [3]], 2: [[0], [1]], 3: [[0], [1]], 4: [[0], [1, 2]],
    5: [[0], [1, 2]], 6: [[0], [1]], 7: [[0], [1], [0, 2]], 8: [[0], [1]], 9: [[0], [1]],
}


def find_fonts() -> list[Path]:
    """The handwriting fonts installed here; matplotlib's DejaVu when there are none."""
    wanted = {name for names in FONT_FILES.values() for name in names}
    found = sorted({p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*") if p.name in wanted})
    if found:
        return found
    import matplotlib  # ships DejaVu fonts: the generator still works on a bare machine

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [ttf / name for name in FALLBACK_FONTS if (ttf / name).is_file()]


def _affine(img: Image.Image, rng: np.random.Generator, rotate: float, slant: float) -> Image.Image:
    """Rotate (degrees) and slant (shear x by y) an L mask about its centre, canvas grown."""
    w, h = img.size
    a, s = math.radians(rng.uniform(-rotate, rotate)), rng.uniform(-slant, slant)
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1, -s], [0, 1]])
    side = int(math.hypot(w, h) * (1 + abs(s))) + 4
    inv = np.linalg.inv(m)  # PIL wants output -> input
    c_out, c_in = np.array([side / 2, side / 2]), np.array([w / 2, h / 2])
    off = c_in - inv @ c_out
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    out = img.transform((side, side), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    return out.crop(out.getbbox()) if out.getbbox() else out


def font_mask(rng: np.random.Generator, digit: int, fonts: list[Path], px: int) -> Image.Image:
    """An L mask (255 = ink) of `digit` in a random font about px high, slanted and rotated."""
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), px)
    left, top, right, bottom = font.getbbox(str(digit))
    pad = px // 4
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad - left, pad - top), str(digit), font=font, fill=255)
    coverage = np.asarray(img.crop(img.getbbox()), np.float32).mean() / 255
    if coverage < 0.25 and rng.random() < 0.4:  # a thin font written with a broader pen
        ImageDraw.Draw(img).text((pad - left, pad - top), str(digit), font=font, fill=255,
                                 stroke_width=max(1, px // 40), stroke_fill=255)
    return _affine(img, rng, rotate=10, slant=0.25)


def _stroke_points(part, rng: np.random.Generator, wobble: float) -> list[tuple[float, float]]:
    """A skeleton stroke (points and arcs) -> a dense list of jittered points, unit box."""
    pts: list[tuple[float, float]] = []
    for item in part:
        if isinstance(item[0], str):
            _, cx, cy, rx, ry, a0, a1 = item
            n = max(8, int(abs(a1 - a0) / 8))
            pts += [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
                    for a in np.linspace(a0, a1, n)]
        else:
            pts.append(item)
    dense = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / 0.03))
        dense += [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in np.arange(n) / n]
    dense.append(pts[-1])
    # a smooth hand tremor: low-frequency sinusoids, different for x and y
    t = np.linspace(0, 1, len(dense))
    f, ph = rng.uniform(1, 3, 2), rng.uniform(0, 2 * math.pi, 2)
    dx, dy = wobble * np.sin(2 * math.pi * f[0] * t + ph[0]), wobble * np.sin(2 * math.pi * f[1] * t + ph[1])
    return [(x + a, y + b) for (x, y), a, b in zip(dense, dx, dy)]


def stroke_mask(rng: np.random.Generator, digit: int, side: int, pen: float) -> Image.Image:
    """An L mask of a drawn digit: a random form of its skeleton, jittered, slanted,
    squeezed, drawn with a round pen `pen` pixels wide on a side x side canvas."""
    form = FORMS[digit][rng.integers(len(FORMS[digit]))]
    s, a = rng.uniform(-0.3, 0.3), math.radians(rng.uniform(-12, 12))
    sx = rng.uniform(0.6, 1.15)  # narrow or wide hands
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    for index in form:
        pts = _stroke_points(SKELETONS[digit][index], rng, wobble=rng.uniform(0.0, 0.03))
        xy = []
        for x, y in pts:
            x, y = (x - 0.5) * sx + s * (y - 0.5), y - 0.5  # squeeze, then slant
            x, y = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
            xy.append((side / 2 + x * side * 0.6, side / 2 + y * side * 0.6))
        draw.line(xy, fill=255, width=max(1, int(round(pen))), joint="curve")
        r = pen / 2
        for x, y in (xy[0], xy[-1]):  # round caps
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return img.crop(img.getbbox()) if img.getbbox() else img


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def compose(rng: np.random.Generator, mask: Image.Image, size: tuple[int, int], height: float,
            paper: np.ndarray, pen: np.ndarray, light: float, noise: float, lines: bool) -> Image.Image:
    """Put an ink mask on a sheet: paper colour, uneven light, ruled lines, sensor noise.

    height is the digit's height as a fraction of the image's; light the darkening at the
    dark end of a lighting gradient; noise the std of Gaussian noise in grey levels.
    """
    w, h = size
    dh = max(4, int(h * height))
    dw = max(2, int(mask.width * dh / mask.height))
    if dw > w * 0.9:
        dw, dh = int(w * 0.9), max(4, int(w * 0.9 * mask.height / mask.width))
    m = np.zeros((h, w), np.float32)
    x0, y0 = rng.integers(0, w - dw + 1), rng.integers(0, h - dh + 1)
    m[y0:y0 + dh, x0:x0 + dw] = np.asarray(mask.resize((dw, dh), Image.Resampling.LANCZOS), np.float32) / 255
    m = np.clip(m, 0, 1)[..., None]  # (h, w, 1) ink coverage
    sheet = np.broadcast_to(paper, (h, w, 3)).astype(np.float32)
    if lines:  # a notebook's light-blue ruled lines, about a digit's height apart
        step = max(6, int(dh * rng.uniform(0.9, 1.6)))
        rows = (np.arange(h) % step) < max(1, h // 300)
        sheet = np.where(rows[:, None, None], sheet * np.array([0.75, 0.85, 1.0], np.float32), sheet)
    img = sheet * (1 - m) + pen * m
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = ((xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang)) + 0.5  # 0..1
    img = img * (1 - light * ramp)[..., None]
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _ink_colours(rng: np.random.Generator) -> np.ndarray:
    """Pen colours: black, blue, dark grey pencil, red, green felt pen."""
    choices = np.array([[20, 20, 25], [25, 40, 140], [70, 70, 75], [170, 30, 30], [30, 100, 50]], np.float32)
    return choices[rng.choice(len(choices), p=[0.4, 0.3, 0.15, 0.1, 0.05])] + rng.uniform(-15, 15, 3)


def make_fonts(rng, digit, fonts) -> bytes:
    mask = font_mask(rng, digit, fonts, px=int(rng.integers(48, 160)))
    w = int(rng.integers(160, 1200))
    h = int(w * rng.uniform(0.6, 1.4))
    paper = np.array([rng.uniform(205, 255), rng.uniform(200, 250), rng.uniform(180, 240)], np.float32)
    img = compose(rng, mask, (w, h), rng.uniform(0.25, 0.8), paper, _ink_colours(rng),
                  light=rng.uniform(0, 0.45), noise=rng.uniform(0, 10), lines=rng.random() < 0.2)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * w / 400))
    return _jpeg(img, int(rng.integers(35, 96)))


def make_canvas(rng, digit, fonts) -> bytes:
    side = int(rng.integers(140, 420))
    mask = stroke_mask(rng, digit, side, pen=side * rng.uniform(0.02, 0.1))
    frac = rng.uniform(0.4, 0.95)
    style = rng.choice(["black-on-white", "white-on-black", "transparent", "colour"], p=[0.4, 0.2, 0.3, 0.1])
    if style == "transparent":
        m = np.zeros((side, side), np.uint8)
        dh = max(4, int(side * frac))
        dw = min(side, max(2, int(mask.width * dh / mask.height)))
        x0, y0 = rng.integers(0, side - dw + 1), rng.integers(0, side - dh + 1)
        m[y0:y0 + dh, x0:x0 + dw] = np.asarray(mask.resize((dw, dh), Image.Resampling.LANCZOS))
        colour = np.array([0, 0, 0] if rng.random() < 0.7 else [30, 30, 200], np.uint8)
        rgba = np.dstack([np.broadcast_to(colour, (side, side, 3)), m])
        return _png(Image.fromarray(np.ascontiguousarray(rgba), "RGBA"))
    paper = {"black-on-white": [255, 255, 255], "white-on-black": [0, 0, 0], "colour": [250, 250, 245]}[style]
    pen = {"black-on-white": [0, 0, 0], "white-on-black": [255, 255, 255], "colour": [30, 60, 200]}[style]
    img = compose(rng, mask, (side, side), frac, np.array(paper, np.float32), np.array(pen, np.float32),
                  light=0.0, noise=0.0, lines=False)
    return _png(img)


def make_scans(rng, digit, fonts) -> bytes:
    dh = int(rng.integers(12, 29))  # digit height in scanned pixels: 5 mm at 60..150 dpi
    if rng.random() < 0.6:
        mask = font_mask(rng, digit, fonts, px=int(rng.integers(40, 100)))
    else:
        mask = stroke_mask(rng, digit, 200, pen=200 * rng.uniform(0.05, 0.1))
    side = int(dh * rng.uniform(1.2, 2.2))
    paper = np.full(3, rng.uniform(200, 250), np.float32)
    img = compose(rng, mask, (side, side), dh / side, paper, np.full(3, rng.uniform(10, 80), np.float32),
                  light=rng.uniform(0, 0.2), noise=rng.uniform(0, 8), lines=False).convert("L")
    if rng.random() < 0.3:  # a bilevel (fax-like) scan
        img = img.point(lambda v: 255 if v > 140 else 0)
    if rng.random() < 0.5:  # enlarged again by a viewer or a screenshot
        k = int(rng.integers(2, 5))
        img = img.resize((img.width * k, img.height * k), rng.choice([Image.Resampling.NEAREST,
                                                                       Image.Resampling.BILINEAR]))
    return _jpeg(img, int(rng.integers(40, 90))) if rng.random() < 0.6 else _png(img)


def make_light_on_dark(rng, digit, fonts) -> bytes:
    if rng.random() < 0.6:
        mask = font_mask(rng, digit, fonts, px=int(rng.integers(48, 140)))
    else:
        mask = stroke_mask(rng, digit, 240, pen=240 * rng.uniform(0.03, 0.09))
    if rng.random() < 0.5:  # chalk: broken, grainy strokes
        grain = rng.uniform(0.45, 1.0, (mask.height, mask.width))
        mask = Image.fromarray((np.asarray(mask, np.float32) * grain).astype(np.uint8), "L")
    w = int(rng.integers(120, 900))
    h = int(w * rng.uniform(0.7, 1.3))
    boards = np.array([[40, 60, 45], [30, 30, 35], [60, 60, 60], [25, 30, 60]], np.float32)
    paper = boards[rng.integers(len(boards))] + rng.uniform(-10, 10, 3)
    pen = np.array([rng.uniform(190, 255)] * 3, np.float32) - rng.uniform(0, 20, 3)
    img = compose(rng, mask, (w, h), rng.uniform(0.3, 0.8), paper, pen, light=rng.uniform(0, 0.4),
                  noise=rng.uniform(0, 8), lines=False)
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * w / 400))
    return _jpeg(img, int(rng.integers(40, 96)))


def _digit_mask(rng, digit, fonts, px: int) -> Image.Image:
    """A font or a canvas-stroke digit (255 = ink), cropped to its ink."""
    if rng.random() < 0.6:
        mask = font_mask(rng, digit, fonts, px=px)
    else:
        mask = stroke_mask(rng, digit, 200, pen=200 * rng.uniform(0.05, 0.1))
    return mask.crop(mask.getbbox() or (0, 0, mask.width, mask.height))


def make_tight(rng, digit, fonts) -> bytes:
    """Cropped tightly around the digit: its ink touches 1..4 edges; dark on light or light
    on dark, sometimes enlarged and blurred (a close-up), JPEG or PNG."""
    mask = _digit_mask(rng, digit, fonts, px=int(rng.integers(48, 140)))
    m = np.asarray(mask, np.float32) / 255.0
    h, w = m.shape
    touching = int(rng.integers(1, 5))  # this many edges keep no margin
    margins = [0] * touching + [int(rng.integers(2, max(3, h // 4))) for _ in range(4 - touching)]
    rng.shuffle(margins)
    top, bottom, left, right = margins
    m = np.pad(m, ((top, bottom), (left, right)))
    dark = rng.random() < 0.75
    paper, ink = (rng.uniform(200, 255), rng.uniform(0, 70)) if dark else (rng.uniform(0, 60), rng.uniform(190, 255))
    img = Image.fromarray(np.clip(paper * (1 - m) + ink * m + rng.normal(0, rng.uniform(0, 5), m.shape), 0, 255)
                          .astype(np.uint8), "L")
    if rng.random() < 0.4:
        k = rng.uniform(2, 4)
        img = img.resize((int(img.width * k), int(img.height * k)), Image.Resampling.BICUBIC)
    return _jpeg(img, int(rng.integers(60, 95))) if rng.random() < 0.5 else _png(img)


def _small_scan(rng, digit, fonts, lo: int, hi: int) -> bytes:
    """A digit lo..hi px high, scanned with a small margin, then enlarged 3..8x by a viewer
    with any filter."""
    mask = _digit_mask(rng, digit, fonts, px=int(rng.integers(48, 120)))
    dh = int(rng.integers(lo, hi + 1))
    dw = max(1, round(mask.width * dh / mask.height))
    small = np.asarray(mask.resize((dw, dh), Image.Resampling.BOX), np.float32) / 255.0
    pad = int(rng.integers(0, 3))
    small = np.pad(small, pad)
    paper, ink = rng.uniform(200, 250), rng.uniform(10, 80)
    img = Image.fromarray(np.clip(paper * (1 - small) + ink * small + rng.normal(0, rng.uniform(0, 4), small.shape),
                                  0, 255).astype(np.uint8), "L")
    k = int(rng.integers(3, 9))
    filt = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
            Image.Resampling.LANCZOS][int(rng.integers(4))]
    return _png(img.resize((img.width * k, img.height * k), filt))


def make_scans_small(rng, digit, fonts) -> bytes:
    return _small_scan(rng, digit, fonts, 6, 10)


def make_scans_medium(rng, digit, fonts) -> bytes:
    return _small_scan(rng, digit, fonts, 11, 16)


MAKERS = {"fonts": make_fonts, "canvas": make_canvas, "scans": make_scans, "light-on-dark": make_light_on_dark,
          "tight": make_tight, "scans-6-10px": make_scans_small, "scans-11-16px": make_scans_medium}


def generate(category: str, n: int, seed: int = 0, fonts: list[Path] | None = None) -> tuple[list[bytes], list[int]]:
    """n encoded images (PNG/JPEG bytes, as a user would upload them) and their labels.

    Image i shows digit i % 10 and depends only on (seed, category, i).
    """
    fonts = fonts if fonts is not None else find_fonts()
    maker, index = MAKERS[category], CATEGORIES.index(category)
    images = [maker(np.random.default_rng([seed, index, i]), i % 10, fonts) for i in range(n)]
    return images, [i % 10 for i in range(n)]


def tutorial_input(img: Image.Image) -> torch.Tensor:
    """The tutorials' preprocessing: grey, bare resize to 28x28, invert -> (1, 28, 28)."""
    arr = np.asarray(img.convert("L").resize((28, 28)), np.float32) / 255.0
    return torch.from_numpy(1.0 - arr)[None]


def measure(predictor, images: list[bytes], labels: list[int]) -> dict:
    """Accuracy of our preprocessing and of the tutorials' on the same images and model."""
    from lenet.imagefile import open_image

    decoded = [open_image(data, f"#{i}") for i, data in enumerate(images)]
    ours = predictor.predict_images(decoded, top_k=1)
    ours_ok = sum(r["prediction"] == y for r, y in zip(ours, labels))
    blanks = sum(r["prediction"] is None for r in ours)
    refused = sum(r["status"] in ("not_a_digit", "no_digit") for r in ours)
    base = predictor.probabilities(torch.stack([tutorial_input(img) for img in decoded])).argmax(1)
    base_ok = int((base == torch.tensor(labels)).sum())
    return {"n": len(labels), "ours": ours_ok / len(labels), "baseline": base_ok / len(labels),
            "no_digit": blanks, "refused": refused, "wrong": [i for i, (r, y) in enumerate(zip(ours, labels)) if r["prediction"] != y]}


def save_grid(path: str, rows: dict[str, list[bytes]], predictor, per_row: int = 10) -> None:
    """A picture: per category, the images as uploaded and below them what the model saw."""
    from lenet.imagefile import open_image

    cell = 64
    grid = Image.new("L", (per_row * cell, 2 * len(rows) * cell), 128)
    for r, (category, images) in enumerate(rows.items()):
        for c, data in enumerate(images[:per_row]):
            img = open_image(data)
            thumb = img.convert("RGBA")
            thumb = Image.alpha_composite(Image.new("RGBA", thumb.size, "white"), thumb).convert("L")
            thumb.thumbnail((cell - 4, cell - 4))
            grid.paste(thumb, (c * cell + 2, 2 * r * cell + 2))
            seen = predictor.preprocess(img).image
            if seen is not None:
                arr = (seen[0].numpy() * 255).astype(np.uint8)
                grid.paste(Image.fromarray(arr, "L").resize((cell - 8, cell - 8), Image.Resampling.NEAREST),
                           (c * cell + 4, (2 * r + 1) * cell + 4))
    grid.save(path)


def print_nondigits(predictor, n: int, seed: int) -> None:
    """Generated non-digits (lenet.synthetic, seeds the calibration never used): how many
    are flagged (any status but ok), and by which status."""
    from lenet.synthetic import nondigits

    images, kinds = nondigits(n, seed)
    results = predictor.predict_images(images, top_k=1)
    statuses = [r["status"] for r in results]
    flagged = sum(s != "ok" for s in statuses) / len(statuses)
    counts = ", ".join(f"{s} {statuses.count(s)}" for s in ("not_a_digit", "unsure", "no_digit", "ok"))
    worst = min(set(kinds), key=lambda k: sum(s != "ok" for s, kk in zip(statuses, kinds) if kk == k))
    per_kind = sum(s != "ok" for s, k in zip(statuses, kinds) if k == worst) / kinds.count(worst)
    print(f"{'non-digits':<15}{len(images):>6}  flagged {flagged:.1%} ({counts}; least flagged: {worst} {per_kind:.0%})")


def print_mnist(predictor, root) -> None:
    """MNIST's own test digits handed over as people do: the first 1,000 cropped to their ink's
    box (dark on white), that crop enlarged 4x (bicubic), reduced to an 8 px box and enlarged 8x
    (bicubic); and all 10,000 as stored, with how many are refused (not_a_digit / no_digit)."""
    from lenet.data import load_dataset

    data = load_dataset("mnist", root)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()

    def crop(x):
        ys, xs = np.nonzero(x > 0)
        return Image.fromarray(255 - x[ys.min():ys.max() + 1, xs.min():xs.max() + 1], "L")

    def scan(c):
        s = 8 / max(c.size)
        small = c.resize((max(1, round(c.width * s)), max(1, round(c.height * s))), Image.Resampling.BOX)
        return small.resize((small.width * 8, small.height * 8), Image.Resampling.BICUBIC)

    crops = [crop(x) for x in images[:1000]]
    ways = {"tight crop": crops, "tight crop x4": [c.resize((c.width * 4, c.height * 4), Image.Resampling.BICUBIC)
                                                    for c in crops],
            "8 px box x8": [scan(c) for c in crops], "as stored": [Image.fromarray(x, "L") for x in images]}
    for name, imgs in ways.items():
        results = predictor.predict_images(imgs, top_k=1)
        right = sum(r["prediction"] == y for r, y in zip(results, labels)) / len(imgs)
        refused = sum(r["status"] in ("not_a_digit", "no_digit") for r in results) / len(imgs)
        print(f"MNIST {name:<15}{len(imgs):>6}{right:>9.1%}{'':>10}{'':>10}{refused:>9.2%}", flush=True)


def print_non_items(predictor, n: int, seed: int, root) -> None:
    """A model of other classes (Fashion-MNIST): generated non-digits and the first n MNIST test
    digits (dark on white) flagged (any status but ok), its own test set refused."""
    from lenet.data import load_dataset

    print_nondigits(predictor, n, seed)
    digits = load_dataset("mnist", root).test_images.numpy()[:n]
    flagged = [r["status"] != "ok" for r in predictor.predict_images([Image.fromarray(255 - x) for x in digits], 1)]
    print(f"{'MNIST digits':<15}{len(flagged):>6}  flagged {sum(flagged) / len(flagged):.1%}")
    own = load_dataset(predictor.dataset, root)
    results = predictor.predict_images([Image.fromarray(x) for x in own.test_images.numpy()], top_k=1)
    right = sum(r["prediction"] == y for r, y in zip(results, own.test_labels.tolist())) / len(results)
    refused = sum(r["status"] in ("not_a_digit", "no_digit") for r in results) / len(results)
    print(f"{predictor.dataset + ' test':<15}{len(results):>6}  read {right:.1%}, refused {refused:.2%}")


def print_numbers(predictor, n: int, seed: int, root) -> None:
    """Numbers of 2..8 MNIST *test* digits (lenet.synthetic.compose_number): whole-number
    accuracy with every digit apart, and with every neighbour pair touching."""
    from lenet.data import load_dataset
    from lenet.synthetic import compose_number

    data = load_dataset("mnist", root)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    for touching in (False, True):
        rng = np.random.default_rng([seed, 7, touching])
        right = 0
        for _ in range(n):
            idx = rng.integers(0, len(labels), int(rng.integers(2, 9)))
            result = predictor.predict_number(compose_number([images[i] for i in idx], rng, touching))
            right += result["number"] == "".join(str(labels[i]) for i in idx)
        name = "numbers, touch" if touching else "numbers, apart"
        print(f"{name:<15}{n:>6}  whole numbers right {right / n:.1%}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="model file or embedded name (default: mnist)")
    parser.add_argument("--n", type=int, default=500, help="images per category (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--grid", help="also save a PNG: sample images and what the model saw")
    parser.add_argument("--no-extras", action="store_true", help="digit categories only (no non-digits, no numbers)")
    parser.add_argument("--data-root", help="where MNIST is (for the numbers; default: lenet's data root)")
    args = parser.parse_args(argv)

    from lenet.predict import Predictor

    fonts = find_fonts()
    families = sorted({pkg for pkg, names in FONT_FILES.items() for f in fonts if f.name in names})
    print(f"fonts: {len(fonts)} files" + (f" from {len(families)} of {len(FONT_FILES)} packages"
                                          if families else " (no handwriting fonts installed: DejaVu only)"))
    predictor = Predictor(args.checkpoint)
    print(f"model: {predictor.meta['path']} ({predictor.model_name}, {predictor.dataset})")
    if not predictor.digits:  # a model of other things: what it flags as "none of these"
        print_non_items(predictor, args.n, args.seed, args.data_root)
        return 0
    print(f"{'category':<15}{'n':>6}{'ours':>9}{'baseline':>10}{'no digit':>10}{'refused':>9}")
    total = {"n": 0, "ours": 0.0, "baseline": 0.0, "no_digit": 0, "refused": 0}
    samples = {}
    for category in args.categories:
        images, labels = generate(category, args.n, args.seed, fonts)
        samples[category] = images
        m = measure(predictor, images, labels)
        print(f"{category:<15}{m['n']:>6}{m['ours']:>9.1%}{m['baseline']:>10.1%}{m['no_digit']:>10}"
              f"{m['refused'] / m['n']:>9.1%}", flush=True)
        for key in ("n", "no_digit", "refused"):
            total[key] += m[key]
        total["ours"] += m["ours"] * m["n"]
        total["baseline"] += m["baseline"] * m["n"]
    n = total["n"]
    print(f"{'all digits':<15}{n:>6}{total['ours'] / n:>9.1%}{total['baseline'] / n:>10.1%}{total['no_digit']:>10}"
          f"{total['refused'] / n:>9.1%}")
    if not args.no_extras:
        print_mnist(predictor, args.data_root)
        print_nondigits(predictor, args.n, args.seed)
        print_numbers(predictor, args.n, args.seed, args.data_root)
    if args.grid:
        save_grid(args.grid, samples, predictor)
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
