"""The web API of `lenet serve`: the predict object, every 4xx case, limits, batching.

    pytest tests/test_serve_api.py

Most tests run the app in-process with FastAPI's test client on small random-weight
checkpoints (fast, no embedded weights needed); the ones about sockets, concurrency and
reading limits run a real uvicorn on a free loopback port in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lenet.checkpoint import save_checkpoint
from lenet.errors import LenetError
from lenet.models import create_model
from lenet.serve import create_app, serve_command
from lenet.serve.app import MAX_WAITING, MAX_WORKERS, worker_count
from lenet.serve.batcher import Batcher
from lenet.serve.inference import Job, load_models, model_name, run_batch
from lenet.synthetic import compose_number
from lenet.trust import STATUSES
from lenet.serve.protocol import ConnectionLimits
from lenet.serve.server import bind_socket, make_server, url_of

with warnings.catch_warnings():  # Starlette 1.x: its test client will move to `httpx2`
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

# The app answers to loopback names only: not to the test client's default, "testserver".
LOCAL = "http://localhost"
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]


# ---------- images and checkpoints ----------

def drawing(kind: str = "seven", side: int = 280) -> Image.Image:
    """A digit drawn like the page draws it: black round strokes on white."""
    img = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(img)
    s, width = side / 280, round(24 * side / 280)
    if kind == "seven":
        draw.line([(70 * s, 62 * s), (210 * s, 62 * s), (126 * s, 238 * s)], fill="black", width=width,
                  joint="curve")
    elif kind == "one":
        draw.line([(140 * s, 40 * s), (140 * s, 240 * s)], fill="black", width=width)
    elif kind == "zero":
        draw.ellipse([85 * s, 40 * s, 195 * s, 240 * s], outline="black", width=width)
    return img


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def blank_png(side: int = 280) -> bytes:
    return encode(Image.new("RGB", (side, side), "white"))


def write_checkpoint(path: Path, dataset: str, class_names: list[str], accuracy: float) -> str:
    torch.manual_seed(len(class_names[0]))
    meta = {"model": "lenet5", "model_args": {"num_classes": 10}, "dataset": dataset,
            "class_names": class_names, "metrics": {"test_accuracy": accuracy}}
    save_checkpoint(path, create_model("lenet5"), meta)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    """Two random-weight checkpoints: digits (runs/digits/model.safetensors) and fashion."""
    root = tmp_path_factory.mktemp("ckpt")
    return [write_checkpoint(root / "digits" / "model.safetensors", "mnist", [str(i) for i in range(10)], 0.5),
            write_checkpoint(root / "clothes.safetensors", "fashion-mnist", FASHION, 0.25)]


@pytest.fixture(scope="module")
def app(checkpoints):
    return create_app(checkpoints)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def post_image(client, data: bytes, content_type: str | None = "image/png", params: str = "") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return client.post(f"/api/predict{params}", content=data, headers=headers)


def assert_error(response: httpx.Response, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert phrase in response.json()["error"]


# ---------- the predict object ----------

def test_png_gives_the_predict_object(client):
    r = post_image(client, encode(drawing()))
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == "upload" and body["model"] == "digits"
    probs = body["probabilities"]
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-4)
    best = max(range(10), key=probs.__getitem__)
    assert body["prediction"] == best and body["name"] == str(best)
    assert body["confidence"] == pytest.approx(probs[best])
    assert [t["index"] for t in body["top_k"]][0] == best and len(body["top_k"]) == 3
    assert "input_png" not in body


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "WEBP", "PNG"])
def test_each_accepted_format(client, fmt):
    mime = {"JPEG": "image/jpeg", "BMP": "image/bmp", "WEBP": "image/webp", "PNG": "image/png"}[fmt]
    r = post_image(client, encode(drawing(), fmt), mime)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] is not None


def test_multipart_and_octet_stream_give_the_same_answer_as_raw_png(client):
    data = encode(drawing("zero"))
    raw = post_image(client, data).json()
    multipart = client.post("/api/predict", files={"file": ("zero.png", data, "image/png")}).json()
    octet = post_image(client, data, "application/octet-stream").json()
    assert multipart["probabilities"] == raw["probabilities"] == octet["probabilities"]


def test_include_input_is_the_28x28_white_on_black_image(client):
    body = post_image(client, encode(drawing("one")), params="?include_input=true").json()
    prefix = "data:image/png;base64,"
    assert body["input_png"].startswith(prefix)
    seen = Image.open(io.BytesIO(base64.b64decode(body["input_png"][len(prefix):])))
    assert seen.size == (28, 28) and seen.mode == "L"
    pixels = list(seen.tobytes())
    assert max(pixels) == 255 and sum(p > 128 for p in pixels) < 28 * 28 / 4  # white strokes on black
    assert seen.getpixel((0, 0)) == 0 and seen.getpixel((14, 14)) > 128  # a "1" runs through the centre


def test_top_k_is_cut_and_sorted(client):
    top = post_image(client, encode(drawing()), params="?top_k=5").json()["top_k"]
    assert len(top) == 5
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_blank_canvas_is_no_digit_found(client):
    body = post_image(client, blank_png(), params="?include_input=true").json()
    assert body["prediction"] is None and body["name"] == "no digit found"
    assert body["probabilities"] is None and body["input_png"] is None
    assert body["status"] == "no_digit" and body["between"] is None and "box" not in body


@pytest.mark.parametrize("model", ["digits", "clothes"])
def test_every_answer_says_how_sure_it_is(client, model):
    """status, between (the two classes of an unsure answer) and the ink's box, as lenet predict gives them."""
    for kind in ("seven", "one", "zero"):
        body = post_image(client, encode(drawing(kind)), params=f"?model={model}").json()
        assert body["status"] in STATUSES and body["status"] != "no_digit"
        if body["status"] == "unsure":  # random weights: often
            assert len(body["between"]) == 2 and body["between"][0] == body["prediction"]
            assert all(0 <= i < 10 for i in body["between"])
        else:
            assert body["between"] is None
        x0, y0, x1, y1 = body["box"]
        assert 0 <= x0 < x1 <= 280 and 0 <= y0 < y1 <= 280


# ---------- ?number=true: a whole number ----------

MNIST_LIKE = {  # a digit as MNIST has it: white strokes on black, in the middle 20x20 of 28x28
    "0": lambda d: d.ellipse([8, 4, 20, 24], outline=255, width=3),
    "1": lambda d: d.line([(14, 4), (14, 24)], fill=255, width=3),
    "4": lambda d: (d.line([(17, 4), (7, 17), (22, 17)], fill=255, width=3),
                    d.line([(18, 10), (18, 24)], fill=255, width=3)),
    "7": lambda d: d.line([(7, 5), (21, 5), (12, 24)], fill=255, width=3, joint="curve"),
}


def number_png(text: str, seed: int = 0) -> bytes:
    """A handwritten-looking number: MNIST-like digits drawn with PIL, put side by side on
    paper with random gaps, sizes and baselines (lenet.synthetic.compose_number)."""
    digits = []
    for c in text:
        img = Image.new("L", (28, 28), 0)
        MNIST_LIKE[c](ImageDraw.Draw(img))
        digits.append(np.asarray(img))
    return encode(compose_number(digits, np.random.default_rng(seed)))


def assert_number_object(body: dict, model: str, n: int, width: int) -> None:
    assert set(body) == {"path", "model", "number", "status", "digits"}
    assert body["path"] == "upload" and body["model"] == model and body["status"] in STATUSES
    assert len(body["number"]) == len(body["digits"]) == n
    for digit in body["digits"]:
        assert {"prediction", "confidence", "status", "between", "box"} <= set(digit)
        assert digit["status"] in STATUSES and 0 <= digit["confidence"] <= 1
        assert 0 <= digit["box"][0] < digit["box"][2] <= width
    lefts = [d["box"][0] for d in body["digits"]]
    assert lefts == sorted(lefts) and all(a[2] <= b[0] for a, b in zip(
        [d["box"] for d in body["digits"]], [d["box"] for d in body["digits"][1:]]))  # apart, left to right


def test_number_mode_reads_each_digit_left_to_right(client):
    data = number_png("1407")
    width = Image.open(io.BytesIO(data)).width
    body = post_image(client, data, params="?number=true").json()
    assert_number_object(body, "digits", 4, width)
    assert body["number"] == "".join(str(d["prediction"]) for d in body["digits"])
    with_input = post_image(client, data, params="?number=true&include_input=true").json()
    assert all(d["input_png"].startswith("data:image/png;base64,") for d in with_input["digits"])


@pytest.mark.parametrize("text, seed", [("170", 0), ("1407", 1), ("74", 2), ("7041", 3)])
def test_embedded_model_reads_a_generated_number(embedded_client, text, seed):
    data = number_png(text, seed)
    body = post_image(embedded_client, data, params="?number=true").json()
    assert_number_object(body, "mnist", len(text), Image.open(io.BytesIO(data)).width)
    assert body["number"] == text and body["status"] == "ok", body


def test_number_mode_of_a_blank_image_is_no_number(client):
    body = post_image(client, blank_png(), params="?number=true").json()
    assert body["number"] is None and body["status"] == "no_digit" and body["digits"] == []
    assert "no digit found" in body["reason"] and body["model"] == "digits"


def test_number_mode_needs_a_digit_model(client):
    assert_error(post_image(client, number_png("74"), params="?model=clothes&number=true"), 400,
                 "number=true reads digits; model 'clothes' has other classes")
    assert_error(post_image(client, b"not even an image", params="?number=true"), 400, "not a PNG")


def test_number_jobs_share_a_batch_with_single_digits(app):
    predictor = app.state.models["digits"]
    jobs = [Job(encode(drawing())), Job(number_png("74"), number=True), Job(b"junk", number=True),
            Job(encode(drawing("one")), top_k=1)]
    results = run_batch(predictor, jobs, max_pixels=10**7)
    assert "prediction" in results[0] and len(results[1]["digits"]) == 2
    assert isinstance(results[2], LenetError) and "upload" in str(results[2])  # its own 400
    assert len(results[3]["top_k"]) == 1
    clothes = run_batch(app.state.models["clothes"], [Job(number_png("74"), number=True)], max_pixels=10**7)
    assert isinstance(clothes[0], LenetError) and "reads digits" in str(clothes[0])


@pytest.mark.slow
def test_embedded_model_reads_numbers_of_mnist_test_digits(embedded_client, mnist_root):
    from lenet.data import load_dataset

    data = load_dataset("mnist", mnist_root)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    rng = np.random.default_rng(7)
    right, n = 0, 40
    for _ in range(n):
        idx = rng.integers(0, len(labels), int(rng.integers(2, 7)))
        body = post_image(embedded_client, encode(compose_number([images[i] for i in idx], rng)),
                          params="?number=true").json()
        right += body["number"] == "".join(str(labels[i]) for i in idx)
    assert right / n >= 0.9, right / n


# ---------- models, health, docs, page ----------

def test_models_lists_each_checkpoint_first_is_default(client):
    body = client.get("/api/models").json()
    assert body["default"] == "digits" and body["max_body_bytes"] == 5 * 2**20
    digits, clothes = body["models"]
    assert digits == {"name": "digits", "model": "lenet5", "dataset": "mnist",
                      "class_names": [str(i) for i in range(10)], "test_accuracy": 0.5,
                      "mode": {"name": "digits", "box": 20, "center_by_mass": True}}
    assert clothes["name"] == "clothes" and clothes["class_names"] == FASHION
    assert clothes["test_accuracy"] == 0.25
    assert clothes["mode"] == {"name": "objects", "box": 28, "center_by_mass": False}  # the page reads it


def test_model_parameter_picks_the_model(client):
    body = post_image(client, encode(drawing()), params="?model=clothes").json()
    assert body["model"] == "clothes" and body["name"] in FASHION
    assert_error(post_image(client, encode(drawing()), params="?model=nope"), 404, "unknown model 'nope'")


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": ["digits", "clothes"]}


def test_openapi_documents_the_predict_body(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "image/bmp", "image/webp", "multipart/form-data"} <= set(body)
    assert {"/healthz", "/api/models"} <= set(spec["paths"])
    post = spec["paths"]["/api/predict"]["post"]
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {a["$ref"].rsplit("/", 1)[1] for a in answer} == {"Prediction", "NumberPrediction"}
    schemas = spec["components"]["schemas"]
    assert {"status", "between", "box"} <= set(schemas["Prediction"]["properties"])
    assert {"number", "status", "digits"} <= set(schemas["NumberPrediction"]["required"])
    assert "number" in {p["name"] for p in post["parameters"]}
    assert client.get("/docs").status_code == 200


def test_page_is_served_with_its_assets_and_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/style.css", "/static/favicon.svg"} <= set(assets)
    for asset in assets:
        text = client.get(asset).text
        # Works offline: no URL to another host (an SVG's xmlns is a name, not a fetch).
        assert re.findall(r"https?://", text.replace('xmlns="http://www.w3.org/2000/svg"', "")) == []


# ---------- every bad request is a 4xx with a JSON error ----------

@pytest.mark.parametrize("data, content_type, status, phrase", [
    (b"", "image/png", 400, "empty body"),
    (b"hello, this is not an image", "image/png", 400, "not a PNG, JPEG, BMP, GIF or WebP"),
    (b"II*\0" + b"\0" * 64, "image/png", 400, "not a PNG, JPEG, BMP, GIF or WebP"),  # a TIFF
    (encode(drawing())[:400], "image/png", 400, "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png", 400, "upload"),  # right magic, garbage after
    (encode(drawing()), "text/plain", 415, "'text/plain' is not accepted"),
    (encode(drawing()), "application/json", 415, "is not accepted"),
    (encode(drawing()), "application/x-www-form-urlencoded", 415, "is not accepted"),  # curl's default
    (encode(drawing()), None, 415, "(none)"),
])
def test_bad_bodies(client, data, content_type, status, phrase):
    assert_error(post_image(client, data, content_type), status, phrase)


def test_bad_multipart_bodies(client):
    no_file = client.post("/api/predict", files={"note": (None, "just text")})
    assert_error(no_file, 400, "no file part")
    not_image = client.post("/api/predict", files={"file": ("x.png", b"plain text", "image/png")})
    assert_error(not_image, 400, "not a PNG")
    no_boundary = post_image(client, b"--x--", "multipart/form-data")
    assert_error(no_boundary, 400, "multipart")


def test_bad_query_parameters(client):
    assert_error(post_image(client, encode(drawing()), params="?top_k=0"), 422, "top_k")
    assert_error(post_image(client, encode(drawing()), params="?top_k=many"), 422, "top_k")
    assert_error(client.get("/no/such/page"), 404, "Not Found")
    assert_error(client.get("/api/predict"), 405, "Method Not Allowed")


# ---------- limits ----------

@pytest.fixture(scope="module")
def small_app(checkpoints):
    return create_app(checkpoints[:1], max_body_bytes=10_000, max_pixels=300 * 300)


@pytest.fixture(scope="module")
def small_client(small_app):
    with TestClient(small_app, base_url=LOCAL) as c:
        yield c


class Chunks:
    """A request body sent in 1,000-byte chunks that counts how many the server pulled."""

    def __init__(self, n: int):
        self.n, self.sent = n, 0

    def __iter__(self):
        for _ in range(self.n):
            self.sent += 1
            yield b"\0" * 1000


def test_declared_length_over_the_limit_is_refused_unread(small_client):
    body = Chunks(50)
    r = small_client.post("/api/predict", content=iter(body),
                          headers={"content-type": "image/png", "content-length": "50000"})
    assert_error(r, 413, "over the limit of 10,000 bytes")
    assert body.sent == 0


def predict_scope(content_type: bytes = b"image/png") -> dict:
    """The ASGI scope of a POST /api/predict, for driving the app without a client."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"",
            "root_path": "", "headers": [(b"host", b"localhost"), (b"content-type", content_type)],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}


def test_chunked_body_is_abandoned_at_the_limit(small_app):
    # Straight through ASGI: the test client would buffer the whole body before the app
    # sees any. This body never ends, so an app that reads it all never answers.
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"\0" * 1000, "more_body": True}

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(small_app(predict_scope(), receive, send), timeout=10))
    assert sent[0]["status"] == 413 and b"over the limit" in sent[1]["body"]
    assert pulled == 11  # 11,000 bytes: one chunk past the 10,000-byte limit, then no more


def test_multipart_over_the_limit(small_client):
    r = small_client.post("/api/predict", files={"file": ("big.png", b"\0" * 20_000, "image/png")})
    assert_error(r, 413, "over the limit")


def test_image_over_the_pixel_limit(small_client):
    r = post_image(small_client, encode(Image.new("L", (400, 400), 255)))
    assert_error(r, 400, "too large")


def test_decompression_bomb_under_the_default_limits(client):
    bomb = encode(Image.new("1", (8000, 8000), 1))  # 64 MP, a few kB of PNG
    assert len(bomb) < 100_000
    assert_error(post_image(client, bomb), 400, "too large")


# ---------- batching and the worker thread ----------

def test_batcher_batches_what_queues_while_the_worker_is_busy():
    calls: list[list[int]] = []

    def run(items):
        calls.append(items)
        time.sleep(0.05)
        return [ValueError(f"bad {x}") if x == 13 else x * 10 for x in items]

    async def main():
        batcher = Batcher(run, ThreadPoolExecutor(1), max_batch=8)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the worker is now busy with [0]; the rest queue up
        rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 20)), return_exceptions=True)
        return [await first, *rest], batcher

    results, batcher = asyncio.run(main())
    assert [r for i, r in enumerate(results) if i != 13] == [i * 10 for i in range(20) if i != 13]
    assert isinstance(results[13], ValueError) and str(results[13]) == "bad 13"  # only its caller sees it
    # A lone request runs at once; what queued behind it goes in batches of at most 8.
    assert calls == [[0], list(range(1, 9)), list(range(9, 17)), [17, 18, 19]]
    assert batcher.batches == 4


def test_batcher_runs_lone_requests_on_every_worker_at_once():
    calls: list[list[int]] = []

    def run(items):
        calls.append(items)
        time.sleep(0.3)
        return items

    async def main():
        batcher = Batcher(run, ThreadPoolExecutor(2), workers=2)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # worker 1 busy: the next request starts worker 2, not a queue
        start = time.perf_counter()
        second = await batcher.submit(1)
        return [await first, second], time.perf_counter() - start

    results, seconds = asyncio.run(main())
    assert results == [0, 1] and calls == [[0], [1]]
    assert seconds < 0.5  # it ran beside the first, not after it


def test_too_many_waiting_is_a_503_not_a_queue(client):
    app = client.app
    app.state.max_waiting, saved = 0, app.state.max_waiting
    try:
        assert_error(post_image(client, encode(drawing())), 503, "server busy")
    finally:
        app.state.max_waiting = saved
    assert post_image(client, encode(drawing())).status_code == 200


def test_a_slow_upload_holds_its_bytes_not_a_queue_slot(checkpoints):
    # Slow uploads must not fill the queue of MAX_WAITING (issue 11: 70 of them made every
    # prediction a 503); their memory is bounded by the bytes all uploads hold together.
    app = create_app(checkpoints[:1])
    app.state.max_waiting = 1
    data = encode(drawing())
    half = len(data) // 2

    async def request(receive, content_type=b"image/png") -> tuple[int, dict]:
        sent = []

        async def send(message):
            sent.append(message)

        await app(predict_scope(content_type), receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def whole_body():
        return {"type": "http.request", "body": data, "more_body": False}

    async def main():
        arrived = asyncio.Event()
        parts = iter([data[:half], data[half:]])

        async def slow_body():  # half the body at once, the rest when the test says so
            part = next(parts)
            if len(part) != half:
                await arrived.wait()
            return {"type": "http.request", "body": part, "more_body": len(part) == half}

        async with app.router.lifespan_context(app):
            slow = asyncio.create_task(request(slow_body))
            await asyncio.sleep(0.05)  # the slow one is reading its body
            during = app.state.waiting, app.state.uploads.held
            served = await request(whole_body)
            app.state.uploads.limit, limit = half + 100, app.state.uploads.limit  # no room for a body
            over_budget = await request(whole_body)
            app.state.uploads.limit = limit
            arrived.set()
            done = await slow
            refused = await request(whole_body, b"text/plain")  # an error holds nothing either
            return during, served, over_budget, done, refused, (app.state.waiting, app.state.uploads.held)

    during, served, over_budget, done, refused, after = asyncio.run(asyncio.wait_for(main(), timeout=20))
    assert during == (0, half)
    assert served[0] == 200 and served[1]["prediction"] is not None
    assert over_budget[0] == 503 and "uploads are arriving" in over_budget[1]["error"]
    assert done[0] == 200 and done[1]["prediction"] is not None
    assert refused[0] == 415 and after == (0, 0)


def test_queue_upload_and_connection_bounds(app):
    assert app.state.max_waiting == MAX_WAITING <= 64  # x 5 MB bodies: at most 320 MB queued
    assert app.state.uploads.limit == MAX_WAITING * 5 * 2**20  # and as much arriving
    # uvicorn's limit_concurrency is off: it 503s every request once that many connections
    # are open, slow ones included. Connections are capped by the protocol instead.
    config = make_server(app).config
    assert config.limit_concurrency is None and config.http.limits == ConnectionLimits()
    assert ConnectionLimits().max_connections <= 256 and ConnectionLimits().head_seconds <= 10
    assert make_server(app, ConnectionLimits(max_connections=5)).config.http.limits.max_connections == 5


def test_worker_count_is_the_usable_cores_capped(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert worker_count() == MAX_WORKERS == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert worker_count() == 1  # pinned to one core on a big machine: one thread, not 32
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert worker_count() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert worker_count() == 2


def test_stopping_the_app_ends_its_worker_threads(checkpoints):
    before = set(threading.enumerate())
    data = encode(drawing())
    for _ in range(2):  # two apps: neither may leave threads behind
        app = create_app(checkpoints[:1])
        for _ in range(2):  # and one app started again after a stop still answers
            with TestClient(app, base_url=LOCAL) as c:
                responses = [post_image(c, data) for _ in range(3)]
                assert [r.status_code for r in responses] == [200] * 3
                assert any(t.name.startswith("lenet-worker") for t in set(threading.enumerate()) - before)
    deadline = time.time() + 5
    while set(threading.enumerate()) - before and time.time() < deadline:
        time.sleep(0.02)
    assert not {t.name for t in set(threading.enumerate()) - before if t.is_alive()}


def test_event_loop_answers_while_a_prediction_runs(checkpoints):
    app = create_app(checkpoints[:1])
    predictor = app.state.models["digits"]
    slow = predictor.answers

    def answers(items, top_k=3):
        time.sleep(0.5)  # a slow forward pass, on the worker thread
        return slow(items, top_k)

    predictor.answers = answers
    data = encode(drawing())

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as c:
            start = time.perf_counter()
            headers = {"content-type": "image/png"}
            predict = asyncio.create_task(c.post("/api/predict", content=data, headers=headers))
            await asyncio.sleep(0.05)
            health = await c.get("/healthz")
            health_seconds = time.perf_counter() - start
            return (await predict), health, health_seconds

    predicted, health, seconds = asyncio.run(main())
    assert health.status_code == 200 and seconds < 0.3
    assert predicted.status_code == 200


# ---------- a real server on loopback ----------

@pytest.fixture(scope="module")
def live(checkpoints):
    """uvicorn in a thread on a free port; yields (url, app)."""
    app = create_app(checkpoints[:1], max_body_bytes=100_000)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield url_of(sock), app
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_fifty_concurrent_clients_all_answered_in_shared_batches(live):
    url, app = live
    data = encode(drawing())
    before = app.state.batchers["digits"].batches

    async def main():
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
            async def one():
                return await c.post("/api/predict", content=data, headers={"content-type": "image/png"})
            return await asyncio.gather(*(one() for _ in range(200)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 200
    assert len({tuple(r.json()["probabilities"]) for r in responses}) == 1  # each got its own answer
    assert app.state.batchers["digits"].batches - before < 200  # some requests shared a forward pass


def raw_exchange(url: str, request: bytes, wait: float = 5.0) -> bytes:
    """Send `request` on a raw socket and return what comes back before it closes or `wait` ends."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(request)
        received = b""
        try:
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
        except socket.timeout:
            pass
    return received


def test_real_server_refuses_a_big_body_before_it_is_sent(live):
    url, _ = live
    head = (b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    reply = raw_exchange(url, head + b"\x89PNG\r\n\x1a\n")  # 50 MB promised, 8 bytes sent
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit" in reply


def test_real_server_stops_reading_a_chunked_body_at_the_limit(live):
    url, _ = live
    head = (b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 60_000 + b"\0" * 60_000 + b"\r\n"
    reply = raw_exchange(url, head + chunk * 2)  # 120 kB, never terminated
    assert reply.startswith(b"HTTP/1.1 413")


# ---------- serve_command and model names ----------

def test_busy_port_is_one_clear_error(checkpoints):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LenetError, match=f"port {port} on 127.0.0.1 is already in use"):
            serve_command(checkpoints[:1], port=port)


def test_unknown_host_is_one_clear_error(checkpoints):
    with pytest.raises(LenetError, match="cannot listen on host"):
        serve_command(checkpoints[:1], host="no-such-host.invalid", port=0)


def test_a_bad_checkpoint_is_a_lenet_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LenetError, match="bad.safetensors"):
        create_app([str(bad)])


def test_model_names(checkpoints):
    assert model_name(None) == "mnist" and model_name("fashion-mnist") == "fashion-mnist"
    assert model_name("runs/big/model.safetensors") == "big"
    assert model_name("runs/big/last.safetensors") == "big"
    assert model_name("somewhere/lenet-bn.safetensors") == "lenet-bn"
    assert list(load_models([checkpoints[0], checkpoints[0], checkpoints[1]])) == ["digits", "digits-2", "clothes"]


# ---------- the embedded model reads drawn digits ----------

@pytest.fixture(scope="module")
def embedded_client():
    with TestClient(create_app(), base_url=LOCAL) as c:
        yield c


@pytest.mark.parametrize("kind, digit", [("seven", 7), ("one", 1), ("zero", 0)])
def test_embedded_model_reads_canvas_drawings(embedded_client, kind, digit):
    body = post_image(embedded_client, encode(drawing(kind))).json()
    assert body["model"] == "mnist" and body["prediction"] == digit, body


# ---------- POST /api/explain: inside the network ----------

PAPER_LAYERS = [("C1", [6, 28, 28]), ("S2", [6, 14, 14]), ("C3", [16, 10, 10]), ("S4", [16, 5, 5]),
                ("C5", [120]), ("F6", [84]), ("output", [10])]


def post_explain(client, data: bytes, content_type: str | None = "image/png", params: str = "") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return client.post(f"/api/explain{params}", content=data, headers=headers)


def png_of(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):])))
    assert img.format == "PNG"
    img.load()
    return img


def test_explain_gives_the_predict_object_and_every_layer(client):
    data = encode(drawing())
    response = post_explain(client, data)
    assert response.status_code == 200, response.text
    body = response.json()
    predicted = post_image(client, data).json()
    for key in ("prediction", "name", "confidence", "probabilities", "status", "between", "box", "model"):
        assert body[key] == predicted[key], key
    assert png_of(body["input_png"]).size == (28, 28)
    assert [(layer["name"], layer["shape"]) for layer in body["layers"]] == PAPER_LAYERS
    assert body["layers"][0]["title"] == "C1 6@28x28" and body["layers"][4]["title"] == "C5 120"
    for layer in body["layers"]:
        sprite = png_of(layer["sprite"])
        assert sprite.mode == "L" and layer["min"] <= layer["max"]
        shape, columns = layer["shape"], layer["columns"]
        if len(shape) == 3:  # the maps side by side, `columns` to a row
            rows = -(-shape[0] // columns)
            assert sprite.size == (columns * shape[2], rows * shape[1])
            assert len(layer["map_min"]) == len(layer["map_max"]) == shape[0]
            assert min(layer["map_min"]) == pytest.approx(layer["min"], abs=1e-3)
            assert max(layer["map_max"]) == pytest.approx(layer["max"], abs=1e-3)
        else:  # a vector: one row, a pixel per unit
            assert sprite.size == (shape[0], 1) and len(layer["values"]) == shape[0]
        pixels = np.asarray(sprite)
        if layer["max"] > layer["min"]:  # uint8-scaled from min..max
            assert pixels.min() == 0 and pixels.max() == 255
    c1, c3 = body["layers"][0]["kernels"], body["layers"][2]["kernels"]
    assert c1["shape"] == [6, 1, 5, 5] and png_of(c1["sprite"]).size == (5, 6 * 5)
    assert c3["shape"] == [16, 6, 5, 5] and png_of(c3["sprite"]).size == (6 * 5, 16 * 5)
    assert c3["inputs"][0] == [0, 1, 2] and len(c3["inputs"]) == 16  # the paper's Table I
    assert all("kernels" not in layer for layer in body["layers"][1::2])
    attribution = body["attribution"]
    overlay = png_of(attribution["png"])
    assert overlay.size == (28, 28) and overlay.mode == "RGBA"
    assert attribution["target"] == body["prediction"] and attribution["bound"] >= 0
    assert "steps" not in body


def test_explain_other_models_and_steps(client):
    body = post_explain(client, encode(drawing()), params="?model=clothes&steps=true").json()
    assert body["model"] == "clothes" and body["name"] in FASHION
    assert [layer["name"] for layer in body["layers"]] == [name for name, _ in PAPER_LAYERS]
    names = [step["name"] for step in body["steps"]]
    assert names[0] == "original 280x280" and names[-1].startswith("fitted 28x28")
    for step in body["steps"]:
        assert max(png_of(step["png"]).size) <= 280


def test_explain_attribution_lies_on_the_ink(embedded_client):
    body = post_explain(embedded_client, encode(drawing())).json()
    assert body["prediction"] == 7 and body["layers"][0]["name"] == "C1"
    seen = np.asarray(png_of(body["input_png"]), dtype=np.float32)
    strength = np.asarray(png_of(body["attribution"]["png"]))[..., 3].astype(np.float32)
    assert strength[seen > 64].sum() > 0.9 * strength.sum()  # gradient x input: only inked pixels


def test_explain_a_blank_canvas_has_no_layers(client):
    body = post_explain(client, blank_png()).json()
    assert body["status"] == "no_digit" and body["prediction"] is None
    assert body["layers"] == [] and body["attribution"] is None


@pytest.mark.parametrize("data, content_type, status, phrase", [
    (b"", "image/png", 400, "empty body"),
    (b"hello, this is not an image", "image/png", 400, "not a PNG, JPEG, BMP, GIF or WebP"),
    (encode(drawing())[:400], "image/png", 400, "truncated"),
    (encode(drawing()), "text/plain", 415, "'text/plain' is not accepted"),
])
def test_explain_bad_bodies(client, data, content_type, status, phrase):
    assert_error(post_explain(client, data, content_type), status, phrase)


def test_explain_errors_as_for_predict(client, small_client):
    data = encode(drawing())
    assert_error(post_explain(client, data, params="?model=nope"), 404, "unknown model 'nope'")
    assert_error(post_explain(client, data, params="?top_k=0"), 422, "top_k")
    assert_error(client.get("/api/explain"), 405, "Method Not Allowed")
    r = client.post("/api/explain", content=data, headers={"content-type": "image/png", "host": "evil.example"})
    assert_error(r, 400, "--allow-host")
    assert_error(small_client.post("/api/explain", content=b"\0" * 20_000, headers={"content-type": "image/png"}),
                 413, "over the limit")
    multipart = client.post("/api/explain", files={"file": ("seven.png", data, "image/png")})
    assert multipart.status_code == 200 and multipart.json()["layers"]
    assert "/api/explain" in client.get("/openapi.json").json()["paths"]


def test_explain_failures_are_json_errors_like_predict(client, app, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes")

    import lenet.serve.inference as inference

    monkeypatch.setattr(inference, "explain_answer", fail)
    assert_error(post_explain(client, encode(drawing())), 503, "model failed")
    assert post_image(client, encode(drawing())).status_code == 200  # predict is unaffected
    monkeypatch.setattr(app.state.models["digits"], "preprocess", fail)
    assert_error(post_explain(client, encode(drawing())), 400, "could not be processed")


def test_explain_beside_predictions_keeps_each_answer_its_own(client):
    """Explaining hooks a private copy of the model: predictions running at the same time on
    other threads neither see the hooks nor change the maps."""
    seven, one = encode(drawing("seven")), encode(drawing("one"))
    alone = post_explain(client, seven).json()["layers"]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post_explain if i % 2 else post_image, client, seven if i % 2 else one)
                   for i in range(24)]
        answers = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in answers)
    for r in answers[1::2]:
        assert [layer["sprite"] for layer in r.json()["layers"]] == [layer["sprite"] for layer in alone]
