"""Fuzz lenet's image input: crashes (exceptions other than LenetError), slow cases, images/s.

    python benchmarks/fuzz_images.py --cases 100000 [--seed 0] [--slow 2.0] [--only INDEX]

Every case is made from (seed, index), so `--only INDEX` replays one. Kinds of case:

  encoded  an image of any mode, size (1x1 to 4096 px a side) and content, written by Pillow
           in one of 20 formats (also with EXIF, or several frames), then kept as is,
           truncated, bit-flipped, with header fields forged, its size fields made huge,
           bytes inserted, a slice repeated or garbage appended -> `open_image` on the bytes,
           then `Predictor.predict` on the image (`predict_number` for some);
  bomb     crafted files: PNG/GIF/BMP/PNM/TIFF headers claiming up to 10^5 x 10^5 pixels,
           zlib bombs, 40 MP images that compress to nothing, TIFFs with thousands of
           strips, PNGs of many tiny chunks, progressive JPEGs with repeated scans;
  pil      PIL images of every mode (1, L, LA, La, P, PA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr,
           LAB, HSV, I, I;16, I;16B, I;16L, F) holding random bytes or extreme values (NaN,
           Inf, +-1e38, 2^31) -> `predict`, `predict_number`, `predict_images`;
  array    numpy arrays and torch tensors of every dtype and many shapes -> `predict`.

Only lenet's calls are timed (not the making of the case); images/s is cases per second of
that time. Exit code 1 when anything crashed or took over --slow seconds.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import time
import traceback
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw

from lenet.errors import LenetError
from lenet.predict import Predictor
from lenet.imagefile import open_image

MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16B", "I;16L", "F"]
WRITERS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM", "ICO", "DDS", "QOI", "PCX", "TGA", "SGI",
           "MSP", "XBM", "BLP", "SPIDER", "EPS", "PDF", "JPEG2000"]
COMMON = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM"]  # written more often: lenet reads these
SLOW_WRITERS = {"WEBP": 1024, "QOI": 256, "DDS": 256, "BLP": 256, "JPEG2000": 512, "EPS": 256, "PDF": 512,
                "SPIDER": 512, "ICO": 256, "PCX": 1024, "TIFF": 2048, "GIF": 2048}  # largest side written
SPECIAL = [0.0, 1.0, 255.0, -1.0, 256.0, 65535.0, 1e30, -1e30, 3e38, -3e38, np.nan, np.inf, -np.inf,
           2.0 ** 31 - 1, -(2.0 ** 31), 0.5, 1e-30]


# --- making cases -----------------------------------------------------------------------------------

def side(rng: np.random.Generator) -> int:
    """Mostly small, some medium, a few large: 1 .. 4096."""
    top = rng.choice([64, 300, 1200, 4096], p=[0.55, 0.3, 0.12, 0.03])
    return int(np.exp(rng.uniform(0, np.log(top)))) or 1


def content(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An RGB picture: noise, a flat colour, a gradient, or a digit-like stroke on paper."""
    kind = rng.choice(["noise", "flat", "gradient", "stroke", "stroke"])
    sw, sh = min(w, 256), min(h, 256)
    if kind == "noise":
        small = Image.fromarray(rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8), "RGB")
    elif kind == "flat":
        return Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    elif kind == "gradient":
        ramp = np.linspace(0, 255, sw, dtype=np.float32)[None, :, None] * np.ones((sh, 1, 3), np.float32)
        small = Image.fromarray(ramp.astype(np.uint8), "RGB")
    else:
        paper, ink = (240, 235, 220), (20, 30, 90)
        if rng.random() < 0.3:
            paper, ink = ink, paper
        small = Image.new("RGB", (sw, sh), paper)
        pts = [(float(rng.uniform(0.2, 0.8) * sw), float(rng.uniform(0.1, 0.9) * sh)) for _ in range(rng.integers(2, 6))]
        ImageDraw.Draw(small).line(pts, fill=ink, width=max(1, int(min(sw, sh) * rng.uniform(0.02, 0.2))))
    return small if (sw, sh) == (w, h) else small.resize((w, h), Image.Resampling.NEAREST)


def in_mode(img: Image.Image, mode: str, rng: np.random.Generator) -> Image.Image:
    """An RGB picture -> any mode; I and F get extreme values sprinkled in."""
    if mode in ("I", "F", "I;16", "I;16B", "I;16L"):
        grey = np.asarray(img.convert("L"), np.float64)
        scale = rng.choice([1.0, 257.0, 1 / 255, 1e6, -1.0])
        arr = grey * scale
        if mode in ("I", "F") and rng.random() < 0.5:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, arr.shape[0]), rng.integers(0, arr.shape[1])
                arr[y:y + rng.integers(1, 30), x:x + rng.integers(1, 30)] = rng.choice(SPECIAL)
        if mode == "F":
            with np.errstate(all="ignore"):
                return Image.fromarray(arr.astype(np.float32), "F")
        arr = np.nan_to_num(arr, posinf=2 ** 31 - 1, neginf=-(2 ** 31))
        if mode == "I":
            return Image.fromarray(np.clip(arr, -(2 ** 31), 2 ** 31 - 1).astype(np.int32), "I")
        u16 = np.clip(arr, 0, 65535).astype(np.uint16)
        raw = u16.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        return Image.frombytes(mode, img.size, raw)
    if mode in ("La", "RGBa", "PA"):
        base = img.convert("RGBA" if mode != "La" else "LA")
        base.putalpha(Image.fromarray(rng.integers(0, 256, (1, 1), dtype=np.uint8)).resize(img.size)
                      if rng.random() < 0.5 else int(rng.integers(0, 256)))
        return base.convert(mode) if mode != "PA" else base.convert("P").convert("PA")
    if mode in ("LA", "RGBA") and rng.random() < 0.5:
        out = img.convert(mode)
        alpha = np.where(np.asarray(img.convert("L")) < 128, 255, int(rng.choice([0, 0, 40, 255]))).astype(np.uint8)
        out.putalpha(Image.fromarray(alpha, "L"))
        return out
    if mode == "P" and rng.random() < 0.3:
        out = img.convert("P")
        out.info["transparency"] = int(rng.integers(0, 256))
        return out
    if mode in ("LAB", "HSV"):
        return Image.frombytes(mode, img.size, img.convert("RGB").tobytes())
    return img.convert(mode)


def random_image(rng: np.random.Generator, max_side: int = 4096) -> tuple[Image.Image, str]:
    w, h = min(side(rng), max_side), min(side(rng), max_side)
    mode = str(rng.choice(MODES))
    img = in_mode(content(rng, w, h), mode, rng)
    return img, f"{mode} {w}x{h}"


def exif_bytes(rng: np.random.Generator) -> bytes:
    if rng.random() < 0.3:
        return b"Exif\0\0" + rng.bytes(int(rng.integers(0, 200)))  # garbage
    exif = Image.Exif()
    exif[0x0112] = int(rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 65535]))  # orientation
    for _ in range(rng.integers(0, 5)):
        exif[int(rng.integers(0, 65536))] = int(rng.integers(0, 2 ** 31))
    try:
        data = exif.tobytes()
    except Exception:  # noqa: BLE001 - a value too large for the tag's type
        data = b"Exif\0\0" + rng.bytes(64)
    if rng.random() < 0.3:  # a malformed tag: flip bytes inside the block
        data = bytearray(data)
        for pos in rng.integers(0, len(data), 4):
            data[pos] = int(rng.integers(0, 256))
        data = bytes(data)
    return data


def encode(img: Image.Image, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """The image written by Pillow as `fmt` (converted to a mode the writer takes), maybe with
    EXIF or several frames; PNG when the writer refuses everything."""
    limit = SLOW_WRITERS.get(fmt, 4096)
    if max(img.size) > limit:
        img = img.resize((max(1, img.size[0] * limit // max(img.size)), max(1, img.size[1] * limit // max(img.size))))
    extra: dict = {}
    note = ""
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and rng.random() < 0.15:
        extra["exif"] = exif_bytes(rng)
        note = " +exif"
    if fmt in ("GIF", "PNG", "WEBP", "TIFF") and rng.random() < 0.1:
        frames = [in_mode(content(rng, *img.size), img.mode if img.mode in ("L", "RGB", "RGBA", "P") else "RGB", rng)
                  for _ in range(rng.integers(1, 4))]
        extra.update(save_all=True, append_images=frames, duration=50, loop=0)
        note += f" +{len(frames)} frames"
    if fmt == "JPEG" and rng.random() < 0.3:
        extra.update(progressive=True, quality=int(rng.integers(5, 100)))
    if fmt == "TIFF" and rng.random() < 0.5:
        extra["compression"] = str(rng.choice(["tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg", "group4"]))
    for convert in (lambda: img, lambda: img.convert("RGB"), lambda: img.convert("RGBA").convert("RGB"),
                    lambda: img.convert("LA").convert("L"), lambda: img.convert("L"), lambda: img.convert("1")):
        try:
            candidate = convert()
        except Exception:  # noqa: BLE001 - Pillow has no such conversion for this mode
            continue
        for kwargs in (extra, {}):
            buf = io.BytesIO()
            try:
                candidate.save(buf, fmt, **kwargs)
                return buf.getvalue(), f"{fmt} {candidate.mode}{note if kwargs else ''}"
            except Exception:  # noqa: BLE001 - this writer does not take this mode, size or option
                continue
    buf = io.BytesIO()
    Image.new("RGB", img.size, (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue(), "PNG (fallback)"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_sizes(data: bytearray, fmt: str, rng: np.random.Generator) -> bytearray:
    """Make the size fields of a header huge (or zero), keeping the header otherwise valid."""
    big = lambda bits: int(rng.choice([0, 1, 2 ** bits - 1, 2 ** (bits - 1), int(rng.integers(1, 2 ** bits))]))  # noqa: E731
    if fmt.startswith("PNG") and len(data) > 33:
        body = struct.pack(">II", big(31), big(31)) + bytes(data[24:29])
        data[8:33] = png_chunk(b"IHDR", body)
    elif fmt.startswith("BMP") and len(data) > 26:
        data[18:26] = struct.pack("<ii", big(31) * int(rng.choice([1, -1])), big(31) * int(rng.choice([1, -1])))
    elif fmt.startswith("GIF") and len(data) > 10:
        data[6:10] = struct.pack("<HH", big(16), big(16))
    elif fmt.startswith("PPM"):
        head, _, rest = bytes(data).partition(b"\n")
        dims, _, rest = rest.partition(b"\n")
        data = bytearray(head + b"\n" + b"%d %d" % (big(31), big(31)) + b"\n" + rest)
    elif fmt.startswith("JPEG"):
        sof = bytes(data).find(b"\xff\xc0")
        sof = sof if sof >= 0 else bytes(data).find(b"\xff\xc2")
        if sof >= 0 and len(data) > sof + 9:
            data[sof + 5:sof + 9] = struct.pack(">HH", big(16), big(16))
    else:
        pos = int(rng.integers(0, max(1, min(len(data) - 4, 64))))
        data[pos:pos + 4] = struct.pack("<I", big(32))
    return data


def mutate(data: bytes, fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    how = str(rng.choice(["as is", "as is", "truncate", "flip", "forge", "huge", "insert", "repeat", "append"]))
    out = bytearray(data)
    n = len(out)
    if how == "truncate":
        out = out[:int(rng.integers(1, max(2, n)))] if rng.random() < 0.5 else out[:max(1, n - int(rng.integers(1, 64)))]
    elif how == "flip":
        span = min(n, 256) if rng.random() < 0.5 else n
        for pos in rng.integers(0, span, int(rng.integers(1, 32))):
            out[pos] ^= 1 << int(rng.integers(0, 8))
    elif how == "forge":
        for _ in range(rng.integers(1, 5)):
            pos = int(rng.integers(0, max(1, min(n, 160))))
            width = int(rng.choice([1, 2, 4]))
            value = rng.choice([0, 1, 2 ** (8 * width) - 1, 2 ** (8 * width - 1), int(rng.integers(0, 2 ** (8 * width)))])
            out[pos:pos + width] = int(value).to_bytes(width, str(rng.choice(["little", "big"])))
    elif how == "huge":
        out = huge_sizes(out, fmt, rng)
    elif how == "insert":
        pos = int(rng.integers(0, n + 1))
        out[pos:pos] = rng.bytes(int(rng.integers(1, 512)))
    elif how == "repeat":
        a = int(rng.integers(0, n))
        b = min(n, a + int(rng.integers(1, 4096)))
        out[b:b] = out[a:b] * int(rng.integers(1, 50))
    elif how == "append":
        out += rng.bytes(int(rng.integers(1, 10_000)))
    return bytes(out), how


def bomb(rng: np.random.Generator) -> tuple[bytes, str]:
    """Crafted files that claim much and hold little, or hold much that costs time."""
    kind = str(rng.choice(["png-claim", "png-zlib", "png-40mp", "png-chunks", "gif-claim", "bmp-claim", "pnm-claim",
                           "tiff-strips", "jpeg-scans", "pnm-plain", "webp-claim"]))
    w, h = int(rng.integers(1, 100_000)), int(rng.integers(1, 100_000))
    if kind in ("png-claim", "png-zlib", "png-40mp"):
        if kind == "png-40mp":
            w, h = int(rng.integers(5000, 8000)), 0
            h = 40_000_000 // w
        colour, depth = [(0, 8), (2, 8), (6, 8), (6, 16), (0, 16), (3, 8), (0, 1)][int(rng.integers(0, 7))]
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, int(rng.integers(0, 2))))
        size = int(rng.integers(1, 64)) << 20 if kind != "png-claim" else 64
        plte = png_chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b""
        return (b"\x89PNG\r\n\x1a\n" + ihdr + plte + png_chunk(b"IDAT", zlib.compress(bytes(size), 9))
                + png_chunk(b"IEND", b"")), f"{kind} {w}x{h} colour {colour} depth {depth}"
    if kind == "png-chunks":
        buf = io.BytesIO()
        Image.new("L", (40, 40), 200).save(buf, "PNG")
        png, count = buf.getvalue(), int(rng.integers(1_000, 400_000))
        filler = png_chunk(bytes(rng.choice([b"tEXt", b"zzZz", b"iTXt", b"zTXt"])), b"k\0v") * count
        return png[:33] + filler + png[33:], f"{kind} {count:,}"
    if kind == "gif-claim":
        return (b"GIF89a" + struct.pack("<HHBBB", w & 0xFFFF, h & 0xFFFF, 0x80, 0, 0) + bytes(6) + b"," +
                struct.pack("<HHHHB", 0, 0, w & 0xFFFF, h & 0xFFFF, 0) + b"\x08\x02\x4c\x01\x00;"), f"{kind} {w & 0xFFFF}x{h & 0xFFFF}"
    if kind == "bmp-claim":
        bits = int(rng.choice([1, 4, 8, 24, 32]))
        comp = int(rng.choice([0, 0, 1, 2, 3]))
        return (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54 + 1024) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, bits, comp,
                0, 0, 0, 0, 0) + bytes(1024) + rng.bytes(int(rng.integers(0, 5000)))), f"{kind} {w}x{h} {bits} bit c{comp}"
    if kind == "pnm-claim":
        magic = bytes(rng.choice([b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF"]))
        maxval = b"" if magic in (b"P1", b"P4") else b" %d" % int(rng.choice([1, 255, 256, 1000, 65535])) \
            if magic not in (b"Pf", b"PF") else b" -1.0"
        return magic + b"\n%d %d" % (w, h) + maxval + b"\n" + rng.bytes(int(rng.integers(0, 50_000))), f"{kind} {magic.decode()} {w}x{h}"
    if kind == "pnm-plain":
        n = int(rng.integers(100, 2000))
        return b"P2\n%d %d\n255\n" % (n, n) + b"128 " * min(n * n, 2_000_000), f"{kind} {n}x{n}"
    if kind == "tiff-strips":
        strips, rows = int(rng.integers(1, 200_000)), int(rng.integers(1, 64))
        width, height = int(rng.integers(1, 4000)), strips * rows
        entries = sorted([(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                          (273, 4, strips, 8), (278, 4, 1, rows), (279, 4, strips, 8 + 4 * strips)])
        offsets = struct.pack("<I", 0) * strips
        ifd = 8 + 8 * strips
        return (b"II*\0" + struct.pack("<I", ifd) + offsets + offsets + struct.pack("<H", len(entries))
                + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)), f"{kind} {strips:,} strips {width}x{height}"
    if kind == "webp-claim":
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, "WEBP", lossless=bool(rng.integers(0, 2)))
        data = bytearray(buf.getvalue())
        return bytes(huge_sizes(data, "WEBP", rng)), kind
    # jpeg-scans: a progressive JPEG with one of its scans repeated
    buf = io.BytesIO()
    s = int(rng.integers(16, 2000))
    content(rng, s, s).save(buf, "JPEG", progressive=True)
    jpeg = buf.getvalue()
    start = jpeg.rindex(b"\xff\xda")
    reps = int(rng.integers(1, 400))
    return jpeg[:-2] + jpeg[start:-2] * reps + b"\xff\xd9", f"{kind} {s}x{s} +{reps} scans"


def array_case(rng: np.random.Generator):
    h, w = int(rng.integers(1, 300)), int(rng.integers(1, 300))
    shapes = [(h, w), (h, w, 1), (h, w, 3), (h, w, 4), (h, w, 2), (3, h, w), (1, h, w), (1, 1, h, w), (h,), (0, w),
              (h, w, 5), (2, h, w, 3)]
    shape = shapes[int(rng.integers(0, len(shapes)))]
    dtype = str(rng.choice(["uint8", "float32", "float64", "float16", "bool", "int64", "int32", "uint16", "int8",
                            "complex64", "object"]))
    with np.errstate(all="ignore"):
        arr = (rng.random(shape) * rng.choice([1.0, 255.0, 256.0, 1e6])).astype(dtype)
        if arr.dtype.kind == "f" and arr.size and rng.random() < 0.5:
            arr.flat[rng.integers(0, arr.size, int(rng.integers(1, 4)))] = rng.choice(SPECIAL)
    desc = f"numpy {dtype} {shape}"
    if rng.random() < 0.5 or dtype in ("object", "uint16"):
        return arr, desc
    t = torch.from_numpy(arr)
    how = str(rng.choice(["plain", "bfloat16", "transposed", "grad", "sparse", "half", "channels-first"]))
    if how == "bfloat16" and t.is_floating_point():
        t = t.to(torch.bfloat16)
    elif how == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif how == "grad" and t.is_floating_point():
        t = t.clone().requires_grad_()
    elif how == "sparse" and t.dim() == 2:
        t = t.to_sparse()
    elif how == "half" and t.is_floating_point():
        t = t.half()
    elif how == "channels-first" and t.dim() == 3:
        t = t.permute(2, 0, 1)
    return t, f"tensor {t.dtype} {tuple(t.shape)} {how}"


def make_case(seed: int, index: int):
    """Case `index` -> (description, [the calls to time])."""
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(["encoded", "encoded", "encoded", "encoded", "bomb", "pil", "pil", "array"]))
    number = rng.random() < 0.15
    if kind == "encoded":
        img, what = random_image(rng)
        fmt = str(rng.choice(COMMON)) if rng.random() < 0.6 else str(rng.choice(WRITERS))
        data, wrote = encode(img, fmt, rng)
        data, how = mutate(data, wrote, rng)
        return f"encoded {what} as {wrote}, {how} ({len(data):,} bytes)", ("bytes", data, number)
    if kind == "bomb":
        data, what = bomb(rng)
        return f"bomb {what} ({len(data):,} bytes)", ("bytes", data, number)
    if kind == "pil":
        img, what = random_image(rng)
        return f"pil {what}", ("image", img, number)
    x, what = array_case(rng)
    return f"array {what}", ("array", x, False)


# --- running them ----------------------------------------------------------------------------------

def run_case(predictor: Predictor, call) -> str:
    """Through lenet: 'ok' (an answer), 'refused' (a LenetError); anything else propagates."""
    kind, x, number = call
    try:
        if kind == "bytes":
            x = open_image(x, "fuzz")
        if number:
            predictor.predict(x, number=True)
        elif kind == "image":
            predictor.predict_images([x, x.copy()])
        else:
            predictor.predict(x)
        return "ok"
    except LenetError as exc:
        text = str(exc)
        if "\n" in text or not text:
            raise AssertionError(f"a LenetError that is not one line: {text!r}") from None
        return "refused"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow", type=float, default=2.0, help="seconds above which a case counts as slow")
    p.add_argument("--only", type=int, default=None, help="run only this case index (with its traceback)")
    p.add_argument("--checkpoint", default=None, help="default: the embedded MNIST model")
    p.add_argument("--progress", type=int, default=5000, help="print a line every N cases (0: never)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    predictor = Predictor(args.checkpoint)
    indices = [args.only] if args.only is not None else range(args.cases)
    counts = {"ok": 0, "refused": 0}
    kinds: dict[str, list[int]] = {}
    crashes, slow, slowest = [], [], []
    busy = 0.0
    started = time.perf_counter()
    for n, i in enumerate(indices, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                what, call = make_case(args.seed, i)
            except Exception as exc:  # noqa: BLE001 - the generator's own failure is not lenet's
                print(f"case {i}: could not be made ({type(exc).__name__}: {exc})", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            try:
                outcome = run_case(predictor, call)
            except Exception as exc:  # noqa: BLE001 - a crash: what this benchmark is looking for
                outcome = "crash"
                where = traceback.extract_tb(exc.__traceback__)[-1]
                crashes.append((i, what, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]} "
                                         f"[{where.filename.split('/')[-1]}:{where.lineno}]"))
                if args.only is not None:
                    traceback.print_exc()
            spent = time.perf_counter() - t0
        busy += spent
        counts[outcome] = counts.get(outcome, 0) + 1
        kind = what.split()[0]
        tally = kinds.setdefault(kind, [0, 0, 0])
        tally[0] += 1
        tally[1] += outcome == "refused"
        tally[2] += outcome == "crash"
        slowest = sorted(slowest + [(spent, i, what)], reverse=True)[:5]
        if spent > args.slow:
            slow.append((i, what, spent))
        if args.progress and n % args.progress == 0:
            print(f"  {n:,} cases, {len(crashes)} crashes, {len(slow)} slow, {n / busy:,.0f} images/s", flush=True)
    total = sum(t[0] for t in kinds.values())
    wall = time.perf_counter() - started
    print(f"fuzz_images: {total:,} cases (seed {args.seed}) in {wall:,.0f} s; lenet's time {busy:,.1f} s: "
          f"{total / max(busy, 1e-9):,.0f} images/s")
    print(f"  answered {counts['ok']:,}, refused with one LenetError line {counts['refused']:,}, "
          f"crashes {len(crashes)}, slow (over {args.slow:g} s) {len(slow)}")
    print("  by kind: " + ", ".join(f"{k} {t[0]:,} (refused {t[1]:,}, crashes {t[2]})" for k, t in sorted(kinds.items())))
    print("  slowest: " + "; ".join(f"{s:.2f} s case {i} ({w})" for s, i, w in slowest))
    for i, what, why in crashes[:50]:
        print(f"CRASH case {i} ({what}): {why}")
    for i, what, spent in slow[:50]:
        print(f"SLOW case {i} ({what}): {spent:.2f} s")
    return 1 if crashes or slow else 0


if __name__ == "__main__":
    sys.exit(main())
