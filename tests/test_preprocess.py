"""Preprocessing, step by step, on images constructed here (fast), and on MNIST (slow)."""

from __future__ import annotations

import io
from dataclasses import replace
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from lenet.errors import LenetError
from lenet.imagefile import MAX_PIXELS, open_image
from lenet.preprocess import (BOX, DIGITS, NO_DIGIT, OBJECTS, OUT, Preprocessed, background, preprocess, to_gray,
                              to_png)

SEVEN = [(0.2, 0.15), (0.8, 0.15), (0.45, 0.9)]  # a "7" as a polyline in a unit box


def draw(size=(200, 200), shape=SEVEN, box=(0.3, 0.2, 0.7, 0.8), width=0.12, ink=0, paper=255,
         mode="L") -> Image.Image:
    """A polyline `shape` (unit box) drawn into `box` (fractions of the image) with a round
    pen `width` times the box's height wide."""
    w, h = size
    if mode != "L":  # an int colour in RGB would be a packed value (255 is red): make it grey
        ink, paper = [(c, c, c) if isinstance(c, int) else c for c in (ink, paper)]
    img = Image.new(mode, size, paper)
    x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    pts = [(x0 + x * (x1 - x0), y0 + y * (y1 - y0)) for x, y in shape]
    pen = max(1, round(width * (y1 - y0)))
    d = ImageDraw.Draw(img)
    d.line(pts, fill=ink, width=pen, joint="curve")
    for x, y in (pts[0], pts[-1]):
        d.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=ink)
    return img


def seen(img: Image.Image, **kw) -> np.ndarray:
    """The (28, 28) array preprocess makes of img; fails when it finds nothing."""
    out = preprocess(img, **kw)
    assert out.image is not None, out.reason
    assert out.image.shape == (1, OUT, OUT) and out.image.dtype == torch.float32
    return out.image[0].numpy()


def box_of(a: np.ndarray, level: float = 0.1) -> tuple[int, int]:
    """(height, width) of the pixels above level."""
    rows, cols = np.nonzero((a > level).any(1))[0], np.nonzero((a > level).any(0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return float((a * ys).sum() / a.sum()), float((a * xs).sum() / a.sum())


def similar(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two images, the best over shifts of up to one pixel (rounding the
    centre of mass may move the same digit by one)."""
    pa = np.pad(a, 1)
    return max(float(np.corrcoef(pa[1 + dy:1 + dy + a.shape[0], 1 + dx:1 + dx + a.shape[1]].ravel(), b.ravel())[0, 1])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


# --- polarity, paper, transparency ------------------------------------------------------------

def test_dark_ink_on_light_paper_is_inverted_to_white_on_black():
    out = preprocess(draw(ink=0, paper=255))
    a = out.image[0].numpy()
    assert out.inverted
    assert a.max() == pytest.approx(1.0) and a[0, 0] == 0.0 and a[-1, -1] == 0.0  # black background
    assert 0.05 < (a > 0.5).mean() < 0.3  # some white strokes, not a white sheet


def test_light_ink_on_dark_paper_is_kept_and_matches_the_dark_ink_version():
    dark_ink, light_ink = preprocess(draw(ink=0, paper=255)), preprocess(draw(ink=255, paper=0))
    assert dark_ink.inverted and not light_ink.inverted
    assert similar(dark_ink.image[0].numpy(), light_ink.image[0].numpy()) > 0.99


def test_low_contrast_both_ways():
    grey_on_grey = seen(draw(ink=110, paper=160))
    light_on_grey = seen(draw(ink=200, paper=150))
    reference = seen(draw())
    assert similar(grey_on_grey, reference) > 0.97 and similar(light_on_grey, reference) > 0.97


def test_tinted_paper_with_a_lighting_gradient_and_noise_leaves_a_clean_black_background():
    clean = seen(draw())
    rng = np.random.default_rng(0)
    rgb = np.asarray(draw(mode="RGB", ink=(20, 30, 120), paper=(235, 225, 190)), np.float32)
    ramp = np.linspace(1.0, 0.55, rgb.shape[1], dtype=np.float32)[None, :, None]  # light falls off to the right
    photo = np.clip(rgb * ramp + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    a = seen(Image.fromarray(photo, "RGB"))
    assert similar(a, clean) > 0.95
    # nothing of the paper's gradient or noise comes through: black margins, no extra ink
    assert (a > 0.1).sum() <= (clean > 0.1).sum() * 1.15 and a[:3].max() == 0 and a[:, :3].max() == 0


def test_background_estimate_follows_a_gradient_under_the_ink():
    x = np.linspace(100, 220, 300, dtype=np.float32)
    gray = np.tile(x, (200, 1))  # (200, 300) paper from 100 to 220 across
    gray[80:120, 100:110] = 20  # a dark stroke
    paper, dark = background(gray)
    assert dark
    assert np.abs(paper[:, 5] - gray[:, 5]).max() < 6 and np.abs(paper[100, 105] - x[105]) < 6


def test_rgba_strokes_on_a_transparent_canvas_count_transparency_as_paper():
    strokes = np.asarray(draw(ink=255, paper=0))  # alpha: 255 on strokes
    for colour in ((0, 0, 0), (255, 255, 255), (30, 60, 200)):
        rgba = np.dstack([np.full(strokes.shape + (3,), colour, np.uint8), strokes])
        a = seen(Image.fromarray(rgba, "RGBA"))
        assert similar(a, seen(draw())) > 0.99, colour


def test_rgba_photo_with_a_transparent_border_uses_the_paper_colour_there():
    rgb = np.asarray(draw(mode="RGB", ink=(10, 10, 10), paper=(230, 220, 200)))
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[10:-10, 10:-10] = 255  # a cut-out: opaque paper with the digit, transparent margin
    a = seen(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    assert similar(a, seen(draw())) > 0.99


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "I;16", "I", "F", "CMYK"])
def test_every_common_mode_gives_the_same_digit(mode):
    base = draw()
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base, np.uint16) * 257)  # a 16-bit PNG's mode
    elif mode in ("I", "F"):
        img = Image.fromarray(np.asarray(base, np.int32 if mode == "I" else np.float32), mode)
    else:
        via = {"La": "LA", "RGBa": "RGBA", "PA": "RGBA"}.get(mode, mode)  # Pillow converts these only from there
        img = base.convert(via).convert(mode)
    assert img.mode == mode
    assert similar(seen(img), seen(base)) > 0.97


# --- geometry: crop, aspect ratio, 20x20 box, centre of mass ----------------------------------

def test_digit_fits_the_20_box_and_keeps_its_aspect_ratio():
    bar = draw(shape=[(0.5, 0.0), (0.5, 1.0)], box=(0.4, 0.1, 0.6, 0.9), width=0.15)  # a tall bar
    a = seen(bar)
    assert box_of(a, 0.1)[0] == BOX
    src_h, src_w = 0.8 * 200 * 1.15, 0.8 * 200 * 0.15  # bar + round caps, pen width
    assert (a > 0.5).sum(1).max() == pytest.approx(BOX * src_w / src_h, abs=1)  # 3 px wide, not 20
    wide = draw(shape=[(0.0, 0.5), (1.0, 0.5)], box=(0.1, 0.45, 0.9, 0.55), width=0.5)
    a = seen(wide)
    assert box_of(a, 0.1)[1] == BOX and (a > 0.5).sum(0).max() <= 4


def test_off_centre_digit_ends_up_centred_by_mass():
    corner = draw(size=(300, 240), box=(0.02, 0.05, 0.22, 0.425))  # same 2:3 box as draw()'s
    a = seen(corner)
    cy, cx = centre_of_mass(a)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert similar(a, seen(draw())) > 0.95  # same digit wherever it was drawn


def test_centre_by_box_when_asked():
    a = seen(draw(), mode=replace(DIGITS, center_by_mass=False))
    rows, cols = np.nonzero(a.any(1))[0], np.nonzero(a.any(0))[0]
    assert abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1 and abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1


def test_non_digit_mode_fills_28_and_keeps_grey_levels():
    img = Image.new("L", (120, 100), 255)
    ImageDraw.Draw(img).rectangle((20, 10, 99, 89), fill=128)  # a mid-grey square "garment"
    ImageDraw.Draw(img).rectangle((40, 30, 79, 69), fill=0)
    out = preprocess(img, OBJECTS)
    a = out.image[0].numpy()
    assert box_of(a, 0.05) == (OUT, OUT)
    assert 0.3 < a[3, 3] < 0.7 and a[14, 14] == pytest.approx(1.0, abs=0.05)  # grey stays grey


def test_tiny_and_huge_images():
    tiny = draw(size=(8, 8), box=(0.1, 0.05, 0.9, 0.95), width=0.15)
    assert box_of(seen(tiny))[0] == BOX and similar(seen(tiny), seen(draw())) > 0.6  # 8 px: blocky
    huge = draw(size=(6000, 4500))  # 27 MP
    assert similar(seen(huge), seen(draw(size=(400, 300)))) > 0.97


# --- strokes ----------------------------------------------------------------------------------

def test_thin_and_thick_pens_are_brought_to_mnist_width():
    thin = preprocess(draw(size=(400, 400), width=0.004))
    thick = preprocess(draw(size=(400, 400), width=0.35))
    normal = preprocess(draw(size=(400, 400)))  # a pen 1/8 of the digit's height, as in MNIST
    assert thin.stroke_change > 0 and thick.stroke_change < 0 and normal.stroke_change == 0
    widths = [(p.image[0].numpy() > 0.5).sum() for p in (thin, normal, thick)]
    assert widths[1] * 0.6 < widths[0] < widths[1] * 1.6 and widths[1] * 0.6 < widths[2] < widths[1] * 2


def test_speckle_noise_and_ruled_lines_are_dropped():
    img = np.asarray(draw(size=(300, 300)), np.float32).copy()
    img[::40, :] = np.minimum(img[::40, :], 170)  # notebook lines across the page
    rng = np.random.default_rng(1)
    ys, xs = rng.integers(0, 300, 60), rng.integers(0, 300, 60)
    img[ys, xs] = 0  # specks
    a = seen(Image.fromarray(img.astype(np.uint8), "L"))
    assert similar(a, seen(draw(size=(300, 300)))) > 0.95


@pytest.mark.parametrize("desk", ["strip", "corner", "frame"])
def test_the_desk_around_a_photographed_sheet_is_not_the_digit(desk):
    img = np.asarray(draw(size=(400, 300), mode="RGB", ink=(20, 20, 30), paper=(235, 230, 220))).copy()
    wood = (90, 60, 40)
    if desk == "strip":
        img[:, :70] = wood
    elif desk == "corner":
        img[:90, :100] = wood
    else:
        img[:25] = img[-25:] = img[:, :30] = img[:, -30:] = wood
    assert similar(seen(Image.fromarray(img)), seen(draw(size=(400, 300)))) > 0.97


# --- nothing there ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, img", [
    ("white", Image.new("L", (200, 150), 255)),
    ("black", Image.new("L", (28, 28), 0)),
    ("grey rgb", Image.new("RGB", (640, 480), (200, 190, 170))),
    ("transparent", Image.new("RGBA", (280, 280), (0, 0, 0, 0))),
    ("gradient", Image.fromarray(np.tile(np.linspace(60, 240, 400, dtype=np.float32), (300, 1)).astype(np.uint8))),
    ("noise", Image.fromarray(np.clip(np.random.default_rng(0).normal(200, 6, (300, 400)), 0, 255).astype(np.uint8))),
    ("one dot", Image.fromarray(np.pad(np.zeros((1, 1), np.uint8), 200, constant_values=255))),
])
def test_blank_images_give_no_digit_found(name, img):
    out = preprocess(img)
    assert out.image is None and out.reason.startswith(NO_DIGIT), (name, out)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from(["L", "RGB", "RGBA"]), st.integers(0, 2**32 - 1),
       st.floats(0.0, 1.0))
def test_any_image_gives_a_valid_tensor_or_no_digit(h, w, mode, seed, density):
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = np.where(rng.random((h, w, 1)) < density, rng.integers(0, 256, (h, w, channels)), 255)
    out = preprocess(Image.fromarray(arr.astype(np.uint8).squeeze(-1) if channels == 1 else arr.astype(np.uint8), mode))
    if out.image is None:
        assert out.reason.startswith(NO_DIGIT)
    else:
        assert out.image.shape == (1, OUT, OUT) and 0.0 <= float(out.image.min()) <= float(out.image.max()) <= 1.0
        assert np.isfinite(out.image.numpy()).all()


# --- opening files: every bad input is one clear LenetError naming the file -------------------

def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF"])
def test_open_image_reads_common_formats(fmt, tmp_path):
    path = tmp_path / f"seven.{fmt.lower()}"
    draw(mode="RGB").save(path, fmt)
    assert similar(seen(open_image(path)), seen(draw())) > 0.97
    assert similar(seen(open_image(path.read_bytes())), seen(draw())) > 0.97


def test_gif_first_frame():
    first, second = draw(), Image.new("L", (200, 200), 255)
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100)
    assert similar(seen(open_image(buf.getvalue())), seen(first)) > 0.99


def test_big_jpeg_is_decoded_small_but_still_read_right():
    data = png_bytes(draw(size=(4000, 3000), mode="RGB"), "JPEG", quality=90)
    img = open_image(data)
    assert max(img.size) < 4000
    assert similar(seen(img), seen(draw(size=(400, 300)))) > 0.97


# How a camera stores an upright scene for each EXIF orientation, from the EXIF spec (where the
# stored 0th row and column appear when viewed): 6 is "0th row on the right", a phone turned
# clockwise, so the stored picture is the scene turned 90 degrees counter-clockwise (PIL's ROTATE_90).
STORED_FOR_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                          8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(STORED_FOR_ORIENTATION))
def test_exif_orientation_turns_the_picture_the_right_way(orientation):
    """Size alone cannot tell 90 degrees from 270 (or a flip from none): two marked corners can."""
    upright = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(upright).rectangle((0, 0, 79, 59), fill="black")  # top-left corner: black
    ImageDraw.Draw(upright).rectangle((220, 0, 299, 59), fill=(128, 128, 128))  # top-right: grey
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(STORED_FOR_ORIENTATION[orientation])
    img = open_image(png_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert img.size == upright.size
    got = np.asarray(img.convert("L"), dtype=np.float32)
    corners = [got[5:55, 5:75].mean(), got[5:55, -75:-5].mean(), got[-55:-5, 5:75].mean(), got[-55:-5, -75:-5].mean()]
    assert corners[0] < 30 and 100 < corners[1] < 160 and min(corners[2:]) > 225, corners


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(LenetError, match=r"nope\.png: no such file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(LenetError, match="is a directory"):
        open_image(tmp_path)


def test_non_image_and_empty_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not really a picture\n")
    with pytest.raises(LenetError, match=r"notes\.png: not an image"):
        open_image(text)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(LenetError, match=r"empty\.jpg: empty file"):
        open_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt, tmp_path):
    data = png_bytes(draw(mode="RGB"), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LenetError, match=r"cut\.\w+: truncated or corrupt"):
        open_image(path)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is a few bytes of nothing)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(LenetError, match="bomb.png: image too large"):
        open_image(bomb_png(50_000, 50_000), "bomb.png")  # 2.5 gigapixels: beyond Pillow's own limit
    with pytest.raises(LenetError, match="upload: image too large"):
        open_image(bomb_png(8000, 6000))  # 48 MP: past ours
    assert MAX_PIXELS == 40_000_000
    with pytest.raises(LenetError, match="too large"):
        open_image(png_bytes(draw()), max_pixels=100 * 100)


# --- output -----------------------------------------------------------------------------------

def test_to_png_round_trip():
    out = preprocess(draw())
    back = np.asarray(Image.open(io.BytesIO(to_png(out.image))))
    assert back.shape == (OUT, OUT) and back.dtype == np.uint8
    assert np.abs(back / 255.0 - out.image[0].numpy()).max() <= 0.5 / 255 + 1e-6


def test_to_gray_reduces_big_images_early():
    assert max(to_gray(Image.new("RGB", (5000, 3000), "white")).shape) <= 320


def test_preprocessed_carries_diagnostics():
    out = preprocess(draw(size=(400, 300)))
    assert isinstance(out, Preprocessed) and out.reason is None and out.contrast > 200
    left, top, right, bottom = out.bbox
    # the 7 spans x 152..248, y 87..222 in the 400x300 image, with a 22 px round pen
    assert (left, top, right, bottom) == pytest.approx((141, 76, 259, 233), abs=4)


# --- MNIST itself (slow: the real test set and the embedded model) ----------------------------

@pytest.mark.slow
def test_mnist_test_images_keep_the_model_accuracy_through_preprocess(mnist_root):
    from lenet.checkpoint import load_checkpoint
    from lenet.data import load_dataset
    from lenet.models import get_spec, prepare_input

    data = load_dataset("mnist", mnist_root)
    model, meta = load_checkpoint()
    spec = get_spec(meta["model"])
    raw = data.test_images  # (10000, 28, 28) uint8
    outs = [preprocess(Image.fromarray(x.numpy(), "L")) for x in raw]
    assert sum(o.image is None for o in outs) == 0
    through = torch.stack([o.image for o in outs])  # (10000, 1, 28, 28)
    with torch.no_grad():
        before = (model(prepare_input(raw, spec)).argmax(1) == data.test_labels).float().mean().item()
        after = (model(prepare_input(through, spec)).argmax(1) == data.test_labels).float().mean().item()
    assert after >= before - 0.003, (before, after)
