"""Reading the images people hand over: a path, bytes, a PIL image, an array or a tensor ->
a loaded, upright PIL image, or one LenetError line naming it.

    from lenet.imagefile import open_image, as_image
    open_image("photo.jpg")              # decoded, EXIF rotation applied, big JPEGs decoded small
    as_image(np.zeros((28, 28), np.uint8))

Only the formats README lists are decoded (FORMATS), and the work a file can cost is bounded
before and while it decodes (pixels, TIFF strips, JPEG scans, bytes, reads): a crafted file is
refused in one line, never a traceback or a minute of CPU. Used by lenet.preprocess, predict,
serve and explain.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lenet.errors import LenetError

WORK_SIDE = 200  # the long side preprocessing needs: big JPEGs are decoded down towards it (DCT scaling)
MAX_PIXELS = 40_000_000  # refuse larger images (decompression bombs): 40 MP is a big phone photo
# The formats read (Pillow's names; JPEG includes MPO, what some phones write). Pillow reads
# 40 more, some with decoders written in Python (DDS, QOI: 90 s for 40 MP), some rarely
# checked against hostile files: a digit never needs them.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, WebP, TIFF, PBM/PGM/PPM"
SLOW_PIXELS = 160_000  # images whose layout Pillow decodes in Python (plain-text PNM, PNM with
# an odd maxval, RLE BMP: 0.3-2 MP/s) are refused above this (400x400), before decoding
# Decoded data (pixels x channels x bytes per sample) allowed where a format cannot be decoded
# at a reduced scale as JPEG is: the slowest data measured (random 16-bit PNG, lossy WebP with
# alpha, deflated float TIFF) decodes at 8-30 ns a byte, so each stays near a second.
DECODE_BYTES = {"PNG": 64_000_000, "WEBP": 40_000_000, "TIFF": 128_000_000}
MAX_TILES = 20_000  # TIFF strips/tiles: Pillow loads each in a Python loop (20k: about 0.2 s)
MAX_SCANS = 100  # JPEG scans (a progressive file has about 10): libjpeg passes over the whole
# image for each (1,000 scans took 5.5 s)
PROGRESSIVE_BYTES = 12_000_000  # a progressive JPEG's data decodes at 9-20 MB/s (baseline: 70+)
MAX_READS = 100_000  # reads of the file while decoding one image: Pillow parses PNG chunks, JPEG
# markers, GIF blocks and PNM headers in Python, a read or two each (1M tiny ones took 2-5 s);
# a 40 MP PNG in 8 kB chunks needs about 25,000


def open_image(source: str | Path | bytes, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a file or bytes into a loaded PIL image, or a LenetError naming the file.

    Refuses missing files, directories, non-images, formats other than FORMATS, truncated
    data and images over `max_pixels` (checked from the header, before decoding). Animated
    GIF/WebP: the first frame. EXIF rotation is applied. Big JPEGs are decoded at 1/2..1/8
    scale (DCT scaling): preprocessing needs no more than WORK_SIDE pixels and this is most
    of the decode time.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = name or ("upload" if is_bytes else str(source))
    if is_bytes:
        if len(source) == 0:
            raise LenetError(f"{label}: empty, not an image")
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        try:  # stat itself fails on a name too long for the file system, or a folder not readable
            if path.is_dir():
                raise LenetError(f"{label}: is a directory, not an image")
            if not path.exists():
                raise LenetError(f"{label}: no such file")
            if not path.is_file():
                raise LenetError(f"{label}: not a regular file (a device, FIFO or socket), not an image")
            if path.stat().st_size == 0:
                raise LenetError(f"{label}: empty file, not an image")
            fp = path.open("rb")  # Pillow reads only the header of a non-image, not the whole file
        except OSError as exc:
            raise LenetError(f"{label}: cannot read ({exc.strerror or exc})") from None
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # decompression bombs (refused by our own limit), corrupt tags, ...
        return _decode(fp, label, max_pixels)


def _decode(fp, label: str, max_pixels: int) -> Image.Image:
    """open_image's work on an open binary file: any failure of a decoder on hostile data
    (Pillow's plugins raise OSError, ValueError, NotImplementedError, struct.error, ...)
    becomes one LenetError naming the file, and the decoding work is bounded before
    decoding (_tiff_strips, _bound_work) and while decoding (_Reads)."""
    too_large = f"{label}: image too large (over {max_pixels:,} pixels)"
    busy = f"{label}: too much work to decode (over {MAX_READS:,} reads of tiny chunks, markers or header bytes)"
    strips = _tiff_strips(fp)
    if strips > MAX_TILES:
        raise LenetError(f"{label}: image has too many strips or tiles ({strips:,}, limit {MAX_TILES:,})")
    reads = _Reads(fp)
    try:
        img = Image.open(reads, formats=FORMATS)
    except Image.DecompressionBombError:
        raise LenetError(too_large) from None
    except _TooMuchWork:
        raise LenetError(busy) from None
    except Image.UnidentifiedImageError:
        raise LenetError(f"{label}: not an image (or not one of the formats read: {FORMAT_NAMES})") from None
    except Exception as exc:  # noqa: BLE001 - a forged header can make a plugin raise anything
        raise LenetError(f"{label}: not an image, or its header is corrupt ({_why(exc)})") from None
    try:
        _bound_work(img, fp, reads, label, max_pixels)
        width, height = img.size
        if img.format in ("JPEG", "MPO") and max(width, height) > 2 * WORK_SIDE:
            scale = 2 * WORK_SIDE / max(width, height)  # draft keeps at least this size
            img.draft(img.mode, (int(width * scale) + 1, int(height * scale) + 1))
        img.seek(0)  # first frame of an animation
        img.load()
        return upright(img)
    except LenetError:
        raise
    except Image.DecompressionBombError:
        raise LenetError(too_large) from None
    except _TooMuchWork:
        raise LenetError(busy) from None
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises on corrupt data
        raise LenetError(f"{label}: truncated or corrupt image ({_why(exc)})") from None


def _bound_work(img: Image.Image, fp, reads: _Reads, label: str, max_pixels: int) -> None:
    """Refuse, from an opened image's header, what would take too long to decode: too many
    pixels (for the format, or for a layout decoded in Python), too many TIFF strips or JPEG
    scans. Raises LenetError; gives the Python decoders their read allowance."""
    width, height = img.size
    if width * height > max_pixels:
        raise LenetError(f"{label}: image too large ({width}x{height} = {width * height:,} pixels, "
                         f"limit {max_pixels:,})")
    if width < 1 or height < 1:
        raise LenetError(f"{label}: image has no pixels")
    tiles = getattr(img, "tile", None) or []
    in_python = sorted({tile[0] for tile in tiles} & set(Image.DECODERS))  # Pillow's PyDecoders
    if in_python and width * height > SLOW_PIXELS:
        raise LenetError(f"{label}: image too large for its encoding ({width}x{height}; {in_python[0]} data "
                         f"is decoded slowly, limit {SLOW_PIXELS:,} pixels: save it as PNG)")
    if len(tiles) > MAX_TILES:
        raise LenetError(f"{label}: image has too many strips or tiles ({len(tiles):,}, limit {MAX_TILES:,})")
    if in_python:
        reads.left += 2 * width * height  # these decoders read once or twice per pixel
    data_bytes, cap = width * height * _pixel_bytes(img), DECODE_BYTES.get(img.format, 1 << 62)
    if data_bytes > cap:
        raise LenetError(f"{label}: image too large to decode quickly ({width}x{height} {img.format}: "
                         f"{data_bytes / 1e6:,.0f} MB of pixels, limit {cap / 1e6:,.0f} MB; save it smaller or as JPEG)")
    if img.format in ("JPEG", "MPO"):
        scans, size = _jpeg_scans(fp)
        if scans > MAX_SCANS:
            raise LenetError(f"{label}: a JPEG of over {MAX_SCANS} scans; not a normal image")
        if img.info.get("progressive") and size > PROGRESSIVE_BYTES:
            raise LenetError(f"{label}: a progressive JPEG of {size / 1e6:,.0f} MB decodes slowly (limit "
                             f"{PROGRESSIVE_BYTES / 1e6:,.0f} MB); save it as a baseline JPEG or smaller")


class _TooMuchWork(Exception):
    """Raised by _Reads past MAX_READS (caught in _decode)."""


class _Reads:
    """A binary file that counts the reads made of it and fails past MAX_READS: it bounds the
    work of Pillow's parsers written in Python, which read once or twice per chunk or marker."""

    def __init__(self, fp):
        self.fp, self.left = fp, MAX_READS

    def read(self, *args):
        self.left -= 1
        if self.left < 0:
            raise _TooMuchWork
        return self.fp.read(*args)

    def __getattr__(self, name: str):  # seek, tell, fileno (libtiff reads the file itself), close
        return getattr(self.fp, name)


def _tiff_strips(fp) -> int:
    """How many strips or tiles a TIFF's first image lists (0 for other files), read from its
    header: Pillow makes a Python object of each before anything can be checked (1M took 7 s)."""
    start = fp.tell()
    try:
        head = fp.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        big = head[2:4] in (b"+\0", b"\0+")  # BigTIFF: 8-byte offsets and counts
        if order is None or not (big or head[2:4] in (b"*\0", b"\0*")):
            return 0
        offset, count, entry = (struct.unpack(order + "Q", head[8:16])[0], "Q", "HHQ") if big else \
            (struct.unpack(order + "I", head[4:8])[0], "H", "HHI")
        fp.seek(offset)
        raw = fp.read(struct.calcsize(order + count))
        n = struct.unpack(order + count, raw)[0]
        size = 20 if big else 12
        entries = fp.read(size * min(n, 4096))
        most = 0
        for i in range(len(entries) // size):
            tag, _, values = struct.unpack_from(order + entry, entries, i * size)
            if tag in (273, 279, 324, 325):  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts
                most = max(most, values)
        return most
    except (OSError, struct.error, OverflowError, ValueError):
        return 0  # a header this broken is Pillow's to refuse
    finally:
        fp.seek(start)


def _pixel_bytes(img: Image.Image) -> int:
    """Bytes per pixel of what the decoder produces: its channels times the bytes of a sample
    in the file's raw mode (a 16-bit RGBA PNG decodes "RGBA;16B": 8 bytes, shown as RGBA)."""
    args = img.tile[0][3] if img.tile else None
    raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args and \
        isinstance(args[0], str) else img.mode
    depth = 4 if img.mode in ("I", "F") or "32" in raw else 2 if "16" in raw else 1
    return len(img.getbands()) * depth


def _jpeg_scans(fp) -> tuple[int, int]:
    """(start-of-scan markers (FF DA: entropy-coded data never holds them), bytes) of a JPEG file."""
    start = fp.tell()
    try:
        fp.seek(0)
        count, size, tail = 0, 0, b""
        while block := fp.read(1 << 20):
            count += (tail + block).count(b"\xff\xda")
            size += len(block)
            tail = block[-1:]
        return count, size
    finally:
        fp.seek(start)


def _why(exc: BaseException) -> str:
    """An exception as a short phrase for one line: its message (whitespace folded), else its type."""
    text = " ".join(str(exc).split())[:160]
    return text if text and not text.isdigit() else type(exc).__name__


def as_image(item, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Whatever people have -> a loaded PIL image, or a LenetError in one line.

    A path (str or Path), encoded bytes, a PIL image, a numpy array (H, W) or (H, W, 3|4), or
    a torch tensor (H, W), (1|3|4, H, W) or (H, W, 3|4) (leading axes of size 1 dropped, any
    dtype, device or layout); arrays and tensors hold integers 0..255, or floats in [0, 1].
    """
    if isinstance(item, Image.Image):
        return _pil_image(item, name or "image", max_pixels)
    if isinstance(item, (str, Path, bytes, bytearray, memoryview)):
        return open_image(item, name, max_pixels)
    if isinstance(item, torch.Tensor):
        item = _tensor_array(item, name or "tensor", max_pixels)
    if not isinstance(item, np.ndarray):
        raise LenetError(f"{name or 'input'}: cannot read an image from a {type(item).__name__}; give a path, "
                         "bytes, a PIL image, a numpy array or a torch tensor")
    return _array_image(item, name or "array", max_pixels)


def _pil_image(img: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """A PIL image as given, size-checked and loaded: Image.open only read its header, and its
    data may be corrupt or cut short."""
    width, height = img.size
    if width * height > max_pixels:
        raise LenetError(f"{label}: image too large ({width}x{height}, limit {max_pixels:,} pixels)")
    if width < 1 or height < 1:
        raise LenetError(f"{label}: image has no pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises on corrupt data
        raise LenetError(f"{label}: truncated or corrupt image ({_why(exc)})") from None
    return img


def _tensor_array(t: torch.Tensor, label: str, max_pixels: int) -> np.ndarray:
    """A tensor of any dtype, device or layout -> a numpy array (H, W) or (H, W, C)."""
    if t.numel() > 4 * max_pixels:
        raise LenetError(f"{label}: tensor too large ({tuple(t.shape)}, limit {max_pixels:,} pixels)")
    try:
        t = t.detach()
        t = t.to_dense() if t.layout != torch.strided else t
        t = t.cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()  # numpy has no bfloat16
        while t.dim() > 3 and t.shape[0] == 1:
            t = t[0]  # a batch of one
        if t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (3, 4):
            t = t.permute(1, 2, 0)  # channels first (torchvision's layout) -> (H, W, C)
        return t.numpy()
    except Exception as exc:  # noqa: BLE001 - meta tensors, dtypes numpy lacks, ...
        raise LenetError(f"{label}: cannot read an image from this tensor ({_why(exc)})") from None


def _array_image(arr: np.ndarray, label: str, max_pixels: int) -> Image.Image:
    """(H, W) or (H, W, 1|3|4) integers 0..255 or [0, 1] floats -> a PIL image."""
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]  # a batch of one
    if arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[2] not in (1, 3, 4):
        arr = arr[0]  # (1, H, W): one channel first
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise LenetError(f"{label}: an image array must be (H, W) or (H, W, 3|4), got shape {tuple(arr.shape)}")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise LenetError(f"{label}: image too large ({arr.shape[1]}x{arr.shape[0]}, limit {max_pixels:,} pixels)")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype.kind == "f" or arr.dtype == np.bool_:
        with np.errstate(all="ignore"):  # float64 beyond float32's range becomes Inf: refused below
            arr = arr.astype(np.float32)
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise LenetError(f"{label}: a float image must hold values in [0, 1] (got NaN, Inf or values outside)")
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise LenetError(f"{label}: an integer image must hold values 0..255, got {lo}..{hi}")
        arr = arr.astype(np.uint8)
    else:
        raise LenetError(f"{label}: image arrays must hold integers 0..255 or floats in [0, 1], got {arr.dtype}")
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(arr), mode)


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
