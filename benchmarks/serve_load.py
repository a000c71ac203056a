"""Load test for `lenet serve` on loopback: requests/s, p50/p99 latency, error count.

    lenet serve &                                   # then:
    python benchmarks/serve_load.py                 # 5,000 at concurrency 50, then 500 one at a time
    python benchmarks/serve_load.py --spawn         # starts (and stops) its own server on a free port
    python benchmarks/serve_load.py --spawn --checkpoint runs/x/model.safetensors
    python benchmarks/serve_load.py --spawn --endpoint explain --requests 500 --concurrency 10 --sequential 300
                                                    # POST /api/explain: "Inside the network" (target: p50/p99 <= 30 ms one at a time)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/ --requests 5000 --concurrency 50 \
        --sequential 500 --image digit.png --json

The body is a canvas-sized PNG (280x280, a black "7" on white, as the page sends) unless
--image is given. The client is a few lines of asyncio over keep-alive connections, not
a full HTTP library, so that on a small machine it leaves the cores to the server.

Keep --concurrency at 64 or less: beyond its in-flight cap (MAX_WAITING in
lenet/serve/app.py) the server answers 503 at once, and those count as errors here.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def canvas_png(side: int = 280) -> bytes:
    """A "7" drawn like the page draws it: black round-capped strokes on white."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), "white")
    points = [(0.25 * side, 0.22 * side), (0.75 * side, 0.22 * side), (0.45 * side, 0.85 * side)]
    ImageDraw.Draw(img).line(points, fill="black", width=round(0.09 * side), joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def request_bytes(url: str, body: bytes, endpoint: str = "predict") -> bytes:
    parts = urlsplit(url)
    path = (parts.path.rstrip("/") or "") + f"/api/{endpoint}"
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    await reader.readexactly(int(match.group(1)) if match else 0)
    return status


class Client:
    """One keep-alive connection sending the same request again and again."""

    def __init__(self, host: str, port: int, request: bytes):
        self.host, self.port, self.request = host, port, request
        self.reader = self.writer = None

    async def send(self) -> tuple[float, bool]:
        """(latency in seconds, ok); a broken connection is reopened for the next call."""
        start = time.perf_counter()
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(self.request)
            status = await read_response(self.reader)
            return time.perf_counter() - start, status == 200
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            self.close()
            return time.perf_counter() - start, False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_phase(host: str, port: int, request: bytes, total: int, concurrency: int) -> dict:
    """`total` requests over `concurrency` connections -> the phase's figures."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, errors
        client = Client(host, port, request)
        while remaining > 0:
            remaining -= 1
            latency, ok = await client.send()
            latencies.append(latency)
            errors += not ok
        client.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    seconds = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {"requests": total, "concurrency": concurrency, "seconds": round(seconds, 3),
            "requests_per_second": round(total / seconds, 1), "p50_ms": round(pct(0.50), 2),
            "p99_ms": round(pct(0.99), 2), "max_ms": round(1000 * latencies[-1], 2), "errors": errors}


def spawn_server(checkpoints: list[str]) -> tuple[subprocess.Popen, str]:
    """`lenet serve --port 0` in a child process; returns it and the URL it printed."""
    options = [arg for c in checkpoints for arg in ("--checkpoint", c)]
    proc = subprocess.Popen([sys.executable, "-m", "lenet", "serve", "--port", "0", *options],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://\S+", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, match.group(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--spawn", action="store_true", help="start a server on a free port for the run")
    parser.add_argument("--checkpoint", action="append", default=[], help="with --spawn: the model(s) to serve")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=500, help="requests sent one at a time")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--image", type=Path, help="PNG to send (default: a 280x280 drawn 7)")
    parser.add_argument("--endpoint", choices=["predict", "explain"], default="predict",
                        help="explain: POST /api/explain (every layer's maps, kernels, attribution)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    proc = None
    if args.spawn:
        proc, args.url = spawn_server(args.checkpoint)
    args.url = args.url.rstrip("/") + "/"
    try:
        body = args.image.read_bytes() if args.image else canvas_png()
        parts = urlsplit(args.url)
        host, port, request = parts.hostname, parts.port or 80, request_bytes(args.url, body, args.endpoint)
        asyncio.run(run_phase(host, port, request, args.warmup, 10))
        results = [asyncio.run(run_phase(host, port, request, args.requests, args.concurrency)),
                   asyncio.run(run_phase(host, port, request, args.sequential, 1))]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)

    if args.json:
        print(json.dumps({"url": args.url, "endpoint": args.endpoint, "body_bytes": len(body), "phases": results}))
        return 0
    print(f"POST {args.url}api/{args.endpoint}, {len(body):,}-byte PNG")
    print(f"{'requests':>9} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
    for r in results:
        print(f"{r['requests']:>9} {r['concurrency']:>5} {r['requests_per_second']:>8} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8} {r['max_ms']:>8} {r['errors']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
