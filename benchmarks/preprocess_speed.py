"""How long preprocessing takes: median milliseconds per image on this machine.

    python benchmarks/preprocess_speed.py [--repeat 50] [--json]

Three inputs, each made here: a 12-megapixel phone photo (4032x3024 JPEG of a digit on
tinted paper with uneven light and noise), the same photo already decoded at full size,
and a 280x280 canvas drawing (RGBA PNG, strokes on transparency). For each: decoding
(`open_image`, which decodes big JPEGs at 1/8 scale), `preprocess` (wall time, and CPU
time, which a busy machine does not inflate), and both together.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lenet.imagefile import open_image
from lenet.preprocess import preprocess

SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]
FOUR = [(0.6, 0.85), (0.6, 0.15), (0.2, 0.6), (0.8, 0.6)]


def phone_photo_jpeg(width: int = 4032, height: int = 3024) -> bytes:
    """A phone photo of a "7": cream paper, light falling off to one side, sensor noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(1.0, 0.7, width // 8, dtype=np.float32)[None, :, None]
    small = np.array([235, 228, 205], np.float32) * ramp * np.ones((height // 8, 1, 1), np.float32)
    small += rng.normal(0, 3, small.shape).astype(np.float32)
    img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8), "RGB").resize((width, height))
    pen = int(height * 0.04)
    pts = [(width * (0.3 + 0.4 * x), height * (0.15 + 0.7 * y)) for x, y in SEVEN]
    ImageDraw.Draw(img).line(pts, fill=(30, 40, 110), width=pen, joint="curve")
    img = img.filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def canvas_png(side: int = 280) -> bytes:
    """A web canvas drawing: black strokes on a transparent background."""
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    pts = [(side * x, side * y) for x, y in FOUR]
    ImageDraw.Draw(img).line(pts, fill=(0, 0, 0, 255), width=side // 14, joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def median_ms(fn, repeat: int, clock=time.perf_counter) -> float:
    """Median milliseconds of fn() by `clock`: wall time, or this thread's CPU time
    (time.thread_time), which other processes on a busy machine do not inflate."""
    fn()  # warm-up (caches, lazy imports)
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1000 * statistics.median(times)


def measure(repeat: int) -> list[dict]:
    """Median ms for decode, preprocess and both, per input."""
    photo, canvas = phone_photo_jpeg(), canvas_png()
    full = Image.open(io.BytesIO(photo))
    full.load()  # decoded at full size, no draft: what a caller holding a big image pays
    rows = []
    for name, data, decoded in [("phone photo 4032x3024 JPEG", photo, open_image(photo)),
                                ("same, decoded full size", None, full),
                                ("canvas 280x280 RGBA PNG", canvas, open_image(canvas))]:
        assert preprocess(decoded).image is not None, name
        row = {"input": name, "decoded_size": list(decoded.size),
               "preprocess_ms": median_ms(lambda: preprocess(decoded), repeat),
               "preprocess_cpu_ms": median_ms(lambda: preprocess(decoded), repeat, time.thread_time)}
        if data is not None:
            row["decode_ms"] = median_ms(lambda: open_image(data), repeat)
            row["total_ms"] = median_ms(lambda: preprocess(open_image(data)), repeat)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    rows = measure(args.repeat)
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "load": os.getloadavg()[0], "results": rows}))
        return 0
    print(f"median of {args.repeat} runs; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'input':<28}{'decoded as':>11}{'decode ms':>11}{'preprocess ms':>15}{'(cpu ms)':>10}{'total ms':>10}")
    for r in rows:
        size = "x".join(map(str, r["decoded_size"]))
        decode = f"{r['decode_ms']:.2f}" if "decode_ms" in r else "-"
        total = f"{r['total_ms']:.2f}" if "total_ms" in r else "-"
        print(f"{r['input']:<28}{size:>11}{decode:>11}{r['preprocess_ms']:>15.2f}"
              f"{r['preprocess_cpu_ms']:>10.2f}{total:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
