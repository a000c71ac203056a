"""The drawing page in a real browser: `lenet serve` on a free port, Debian's Chromium headless.

    pytest -m slow tests/test_serve_browser.py      # needs: apt-get install chromium

Draws a 7 with pointer events (a mouse, then a finger on a phone-sized page), uploads a
photo with the file picker and another by drag-and-drop, clears with the button and the
keyboard, and fails on any browser console error. Then, at a desktop and a phone size: the
unsure and not-a-digit answers, the "draw bigger" hint, the pen width, and "Several digits"
(a number drawn digit by digit, each digit's box drawn over it), and "Inside the network"
(live feature maps, kernels, attribution, preprocessing steps); the 28x28 box's hint before
the first stroke, and Fashion-MNIST's names kept whole and inside their boxes. Screenshots go
to the test's temp folder.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from playwright.sync_api import expect

from lenet.checkpoint import load_checkpoint, save_checkpoint
from lenet.models import create_model
from lenet.predict import Predictor

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: no GPU, no first-run pages, no calls home (the machine may be offline).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SEVEN = [(0.27, 0.24), (0.50, 0.23), (0.74, 0.23), (0.60, 0.52), (0.46, 0.84)]  # canvas fractions
DESKTOP = {"viewport": {"width": 1100, "height": 760}}
PHONE = {"viewport": {"width": 390, "height": 664}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
SIZES = {"desktop": DESKTOP, "phone": PHONE}
# A common laptop and a small phone: what the Fashion-MNIST names must fit.
FIT_SIZES = {"desktop": {"viewport": {"width": 1280, "height": 800}},
             "phone": {"viewport": {"width": 375, "height": 667}, "device_scale_factor": 2, "is_mobile": True,
                       "has_touch": True}}
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ---------- the server and the browser ----------

def start_server(*options: str) -> tuple[subprocess.Popen, str]:
    """`lenet serve --port 0` in a child process; returns it and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "lenet", "serve", "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=120)
    line = proc.stdout.readline() if ready else ""
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not match:
        proc.kill()
        pytest.fail(f"lenet serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, match.group(0)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # what Ctrl+C sends: a clean shutdown, "interrupted"
    try:
        assert proc.wait(timeout=15) == 130
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def server_url():
    proc, url = start_server()
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))


# ---------- driving the page ----------

def canvas_point(page, fx: float, fy: float) -> tuple[float, float]:
    box = page.locator("#canvas").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def draw_with_mouse(page, points) -> None:
    page.mouse.move(*canvas_point(page, *points[0]))
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(*canvas_point(page, fx, fy), steps=8)
    page.mouse.up()


def draw_with_finger(page, points) -> None:
    """Real touch input through the DevTools protocol: the page sees pointerType "touch"."""
    cdp = page.context.new_cdp_session(page)

    def touch(kind, fx=None, fy=None):
        pts = [] if fx is None else [dict(zip(("x", "y"), canvas_point(page, fx, fy)))]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": pts})

    touch("touchStart", *points[0])
    for (ax, ay), (bx, by) in zip(points, points[1:]):
        for t in (0.25, 0.5, 0.75, 1.0):
            touch("touchMove", ax + t * (bx - ax), ay + t * (by - ay))
    touch("touchEnd")


def drop_file(page, name: str, data: bytes, mime: str) -> None:
    """Drag-and-drop of a file onto the canvas, as the browser delivers it."""
    page.evaluate("""([name, b64, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: mime }));
        const canvas = document.getElementById("canvas");
        for (const type of ["dragenter", "dragover", "drop"]) {
            canvas.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    }""", [name, base64.b64encode(data).decode("ascii"), mime])


def wait_for_guess(page, text: str) -> None:
    expect(page.locator("#top")).to_have_text(text, timeout=15_000)


def canvas_is_blank(page) -> bool:
    return page.evaluate("""() => {
        const c = document.getElementById("canvas");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        return d.every((v) => v === 255);
    }""")


def bars(page) -> list[tuple[str, float, bool]]:
    """(label, bar length in %, is the top guess) for each class; the length is the one set,
    not the one drawn mid-transition."""
    return page.evaluate("""() => [...document.querySelectorAll('#bars li')].map((li) => [
        li.querySelector('.label').textContent,
        parseFloat(li.querySelector('.fill').style.width) || 0,
        li.classList.contains('best')])""")


def photo_of_zero(path: Path) -> Path:
    """A phone-photo-like JPEG: grey uneven paper, a pencil 0, blur."""
    img = Image.linear_gradient("L").resize((900, 700)).point(lambda v: 150 + v // 5).convert("RGB")
    ImageDraw.Draw(img).ellipse([370, 170, 540, 520], outline=(40, 40, 70), width=22)
    img.filter(ImageFilter.GaussianBlur(2)).save(path, "JPEG", quality=85)
    return path


def png_of_one() -> bytes:
    img = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(img).line([(95, 30), (105, 170)], fill=0, width=16)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ---------- the tests ----------

def test_draw_upload_drop_and_clear(server_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    console = Console(page)
    page.goto(server_url)
    expect(page.locator("#bars li")).to_have_count(10, timeout=15_000)
    assert page.locator("#top").text_content() == "?"

    draw_with_mouse(page, SEVEN)
    wait_for_guess(page, "7")
    shown = bars(page)
    assert [label for label, _, _ in shown] == [str(i) for i in range(10)]
    assert [label for label, _, best in shown if best] == ["7"]
    assert max(shown, key=lambda b: b[1])[0] == "7" and sum(w for _, w, _ in shown) == pytest.approx(100, abs=3)
    assert re.match(r"\d+% sure", page.locator("#confidence").text_content())
    seen = page.locator("#seen")
    assert seen.is_visible() and seen.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('seen').naturalWidth") == 28
    page.wait_for_timeout(200)  # the bars grow in 120 ms: let the picture show them whole
    page.screenshot(path=tmp_path / "drawn-seven.png")

    page.locator("#clear").click()
    assert page.locator("#top").text_content() == "?" and canvas_is_blank(page)
    assert all(width == 0 for _, width, _ in bars(page))

    page.set_input_files("#file", photo_of_zero(tmp_path / "zero.jpg"))
    wait_for_guess(page, "0")
    assert page.locator("#status").text_content() == "Photo: zero.jpg"
    assert not canvas_is_blank(page)  # the photo is shown where one draws

    drop_file(page, "one.png", png_of_one(), "image/png")
    wait_for_guess(page, "1")
    assert page.locator("#status").text_content() == "Photo: one.png"
    page.wait_for_timeout(200)
    page.screenshot(path=tmp_path / "dropped-one.png")

    page.locator("#canvas").focus()  # keyboard: the canvas takes focus, Escape clears it
    page.keyboard.press("Escape")
    assert page.locator("#top").text_content() == "?" and canvas_is_blank(page)
    page.screenshot(path=tmp_path / "cleared.png")
    assert console.errors == []
    for name in ("drawn-seven.png", "dropped-one.png", "cleared.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    page.close()


def test_phone_finger_drawing_and_keyboard_reach(server_url, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 664}, device_scale_factor=3,
                                  is_mobile=True, has_touch=True)
    page = context.new_page()
    console = Console(page)
    page.goto(server_url)
    expect(page.locator("#bars li")).to_have_count(10, timeout=15_000)
    # Nothing sticks out sideways on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    draw_with_finger(page, SEVEN)
    wait_for_guess(page, "7")
    mini = page.locator("#mini")  # the guess next to the buttons, in view under the canvas
    assert mini.text_content().startswith("7 · ") and mini.is_visible()
    assert mini.bounding_box()["y"] + mini.bounding_box()["height"] <= 664
    page.screenshot(path=tmp_path / "phone-seven.png")

    # Tab reaches the canvas and both buttons; Enter on "Clear" clears.
    reached = []
    for _ in range(6):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
    assert {"canvas", "clear", "upload"} <= set(reached)
    page.locator("#clear").focus()
    page.keyboard.press("Enter")
    assert page.locator("#top").text_content() == "?" and canvas_is_blank(page)
    assert console.errors == []
    context.close()


def test_model_selector_switches_classes(browser, tmp_path):
    """With two checkpoints the page offers both; the second's class names become the bars."""
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"]
    torch.manual_seed(0)
    fashion = tmp_path / "clothes.safetensors"
    save_checkpoint(fashion, create_model("lenet5"), {
        "model": "lenet5", "model_args": {"num_classes": 10}, "dataset": "fashion-mnist",
        "class_names": names, "metrics": {"test_accuracy": 0.9}})
    proc, url = start_server("--checkpoint", "mnist", "--checkpoint", str(fashion))
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        console = Console(page)
        page.goto(url)
        expect(page.locator("#model option")).to_have_count(2, timeout=15_000)
        assert page.locator("#model-picker").is_visible()
        page.select_option("#model", "clothes")
        assert [label for label, _, _ in bars(page)] == names
        draw_with_mouse(page, SEVEN)
        expect(page.locator("#top")).not_to_have_text("?", timeout=15_000)
        top = page.locator("#top").text_content()  # random weights: often "Dress or Shirt?"
        assert top in names or all(name in names for name in top.removesuffix("?").split(" or "))
        assert len([1 for _, _, best in bars(page) if best]) == 1
        page.wait_for_timeout(200)
        page.screenshot(path=tmp_path / "fashion-model.png")
        assert console.errors == []
        page.close()
    finally:
        stop_server(proc)


# ---------- how sure the answer is, "draw bigger", several digits: desktop and phone ----------

def wary_checkpoint(path: Path, embedded: str) -> str:
    """An embedded model with a hand-made "trust" entry (lenet.trust's format), so the page's
    states do not hang on how a calibration run came out: every digit is `unsure` (a top
    probability under 0.999 is not enough) and thick, filled ink (a dot, a blob) is
    `not_a_digit` (a detector on two of its features: the stroke width and the ink's share)."""
    model, meta = load_checkpoint(embedded)
    predictor = Predictor(embedded)
    stroke = Image.new("L", (56, 56), 0)
    ImageDraw.Draw(stroke).line([(28, 8), (28, 48)], fill=255, width=5)
    n = predictor.infer([predictor.preprocess(stroke)])[2].shape[1]  # features: ..., ink share, log1p(width)
    width, share = [0.0] * n, [0.0] * n
    width[n - 1], share[n - 2] = 1.0, 1.0
    meta = {**meta, "trust": {
        "temperature": 1.0, "mean": [0.0] * n, "std": [1.0] * n, "hidden_weight": [width, share],
        "hidden_bias": [-1.7, -0.22], "weight": [30.0, 30.0], "bias": -1.0, "threshold": 0.5,
        "min_probability": 0.999, "min_margin": 0.25, "report": {"made_by": "tests/test_serve_browser.py"}}}
    save_checkpoint(path, model, meta)
    return str(path)


@pytest.fixture(scope="module")
def wary_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("wary")
    proc, url = start_server("--checkpoint", wary_checkpoint(root / "wary.safetensors", "mnist"),
                             "--checkpoint", wary_checkpoint(root / "wary-fashion.safetensors", "fashion-mnist"))
    yield url
    stop_server(proc)


def open_page(browser, size: str, url: str, sizes=SIZES):
    context = browser.new_context(**sizes[size])
    page = context.new_page()
    console = Console(page)
    page.goto(url)
    expect(page.locator("#bars li")).to_have_count(10, timeout=15_000)
    return context, page, console


def draw(page, size: str, *strokes) -> None:
    """Each stroke with the mouse on a desktop, with a finger on a phone."""
    for points in strokes:
        (draw_with_finger if size == "phone" else draw_with_mouse)(page, points)


def answered(page) -> None:
    """Wait until the answer for what is on the canvas now is shown (the result panel's aria-busy)."""
    expect(page.locator("#result")).to_have_attribute("aria-busy", "false", timeout=15_000)


def tap(page, size: str, fx: float, fy: float) -> None:
    draw(page, size, [(fx, fy), (fx, fy)])


def scaled(points, factor: float, cx: float = 0.5, cy: float = 0.5):
    return [(cx + (x - 0.5) * factor, cy + (y - 0.5) * factor) for x, y in points]


def assert_idle(page) -> None:
    """No answer shown: before the first stroke, after Clear, after a mode switch."""
    assert page.locator("#top").text_content() == "?"
    assert page.locator("#advice").text_content() == "" and page.locator("#verdict").text_content() == ""
    assert page.locator(".digit-box").count() == 0 and page.locator("#digits li").count() == 0
    assert all(width == 0 for _, width, _ in bars(page))


def colour(page, selector: str) -> str:
    return page.evaluate(f"getComputedStyle(document.querySelector('{selector}')).color")


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_unsure_and_not_a_digit_look_different_from_an_answer(wary_url, browser, tmp_path, size):
    context, page, console = open_page(browser, size, wary_url)
    assert_idle(page)
    assert page.locator("#verdict").get_attribute("aria-live") == "polite"
    sure_colour = colour(page, "#bars")  # the page's text colour, for comparison

    draw(page, size, SEVEN)  # this model is unsure of everything: "7 or ...?"
    answered(page)
    expect(page.locator("#top")).to_have_text(re.compile(r"^7 or \d\?$"))
    question = page.locator("#top").text_content()
    assert "unsure" in page.locator("#top").get_attribute("class")
    assert colour(page, "#top") != sure_colour
    assert page.locator("#confidence .badge.unsure").text_content() == "?"
    assert re.match(r"\?Not sure: 7 \(\d+%\) or \d \(\d+%\)$", page.locator("#confidence").text_content())
    assert page.locator("#verdict").text_content().startswith(f"{question} Not sure.")
    if size == "phone":  # the phone's copy next to the buttons says it too, in view
        mini = page.locator("#mini")
        assert mini.text_content() == question and mini.is_visible()
        assert "unsure" in mini.get_attribute("class")
    page.screenshot(path=tmp_path / f"unsure-{size}.png")

    page.locator("#clear").click()
    assert_idle(page)
    tap(page, size, 0.5, 0.5)  # a dot
    answered(page)
    expect(page.locator("#confidence")).to_have_text("!That doesn't look like a digit")
    assert page.locator("#top").text_content() == "?" and "reject" in page.locator("#top").get_attribute("class")
    assert page.locator("#verdict").text_content().startswith("That doesn't look like a digit")
    assert "dim" in page.locator("#bars").get_attribute("class")
    assert not [label for label, _, best in bars(page) if best]  # no class is put forward

    page.locator("#clear").click()
    blob = [(0.36, 0.36 + 0.025 * k) for k in range(13)]  # a filled square, drawn as a zigzag
    draw(page, size, [point for k, (x, y) in enumerate(blob) for point in ((x, y), (x + 0.28, y))])
    answered(page)
    expect(page.locator("#confidence")).to_have_text("!That doesn't look like a digit")
    page.screenshot(path=tmp_path / f"not-a-digit-{size}.png")

    if size == "desktop":  # a model of items says so in its own words
        page.select_option("#model", "wary-fashion")
        answered(page)
        expect(page.locator("#confidence")).to_have_text("!That doesn't look like any of these items")
    assert console.errors == []
    context.close()


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_draw_bigger_hint_and_pen_width(server_url, browser, tmp_path, size):
    context, page, console = open_page(browser, size, server_url)
    # The pen is a share of the canvas side, whatever the screen: a line's thickness in
    # canvas pixels over the canvas's width.
    draw(page, size, [(0.2, 0.5), (0.8, 0.5)])
    thickness = page.evaluate("""() => {
        const c = document.getElementById("canvas");
        const d = c.getContext("2d").getImageData(Math.round(c.width / 2), 0, 1, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) n += d[i] < 128;
        return [n, c.width, c.clientWidth];
    }""")
    dark, side, css_side = thickness
    assert dark / side == pytest.approx(0.06, abs=0.006)
    if size == "phone":
        assert side >= 2.5 * css_side  # backed by device pixels, so the stroke is sharp
    page.locator("#clear").click()

    draw(page, size, scaled(SEVEN, 0.15))  # a tiny 7
    answered(page)
    expect(page.locator("#advice")).to_have_text("Draw bigger: fill most of the square")
    advice = page.locator("#advice")
    assert advice.is_visible()
    box = advice.bounding_box()
    assert box["y"] + box["height"] <= SIZES[size]["viewport"]["height"]  # under the canvas, in view
    assert page.locator("#verdict").text_content().endswith("Draw bigger: fill most of the square.")
    page.screenshot(path=tmp_path / f"draw-bigger-{size}.png")

    page.locator("#clear").click()
    assert_idle(page)
    draw(page, size, SEVEN)
    answered(page)
    wait_for_guess(page, "7")
    assert page.locator("#advice").text_content() == "" and not page.locator("#advice").is_visible()
    assert console.errors == []
    context.close()


# Three digits drawn apart, in canvas fractions: a 1, a 7 and a 4 (two strokes).
NUMBER = [[(0.17, 0.32), (0.18, 0.68)],
          [(0.40, 0.33), (0.60, 0.33), (0.47, 0.68)],
          [(0.79, 0.31), (0.69, 0.55), (0.91, 0.55)], [(0.85, 0.42), (0.85, 0.69)]]
CENTRES = [0.175, 0.50, 0.80]  # each digit's middle, across


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_several_digits_reads_a_number_and_boxes_each_digit(server_url, browser, tmp_path, size):
    context, page, console = open_page(browser, size, server_url)
    switch = page.locator("#several")
    assert switch.get_attribute("type") == "checkbox" and switch.get_attribute("role") == "switch"
    # Keyboard: Tab reaches the switch, Space turns it on.
    for _ in range(8):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "several":
            break
    assert page.evaluate("document.activeElement.id") == "several"
    page.keyboard.press("Space")
    expect(switch).to_be_checked()
    assert page.locator("#draw-title").text_content() == "Draw a number"
    assert_idle(page)  # no answer until something is drawn
    assert page.locator("#bars").is_hidden()

    draw(page, size, *NUMBER)
    answered(page)
    expect(page.locator(".digit-box")).to_have_count(3)
    expect(page.locator("#top")).to_have_text(re.compile(r"^\d{3}$"))
    number = page.locator("#top").text_content()
    canvas = page.locator("#canvas").bounding_box()
    boxes = [page.locator(".digit-box").nth(i).bounding_box() for i in range(3)]
    for box, centre in zip(boxes, CENTRES):  # image pixels -> canvas pixels: each box on its digit
        assert canvas["x"] <= box["x"] and box["x"] + box["width"] <= canvas["x"] + canvas["width"] + 1
        middle = (box["x"] + box["width"] / 2 - canvas["x"]) / canvas["width"]
        assert middle == pytest.approx(centre, abs=0.06)
        assert 0.25 < box["height"] / canvas["height"] < 0.55  # ~0.36 of the canvas, plus the pen
    assert [b["x"] for b in boxes] == sorted(b["x"] for b in boxes)
    labels = [page.locator(".digit-box span").nth(i).text_content() for i in range(3)]
    assert "".join(labels) == number
    assert page.locator("#digits li").count() == 3 and page.locator("#digits li img").count() == 3
    assert number in page.locator("#verdict").text_content()
    if size == "phone":
        assert page.locator("#mini").text_content() == number and page.locator("#mini").is_visible()
    page.screenshot(path=tmp_path / f"number-{size}.png")

    # A photo of a number: shown letterboxed on the canvas, and the boxes land on its digits.
    photo = Image.new("L", (600, 200), 235)
    pen = ImageDraw.Draw(photo)
    pen.line([(150, 40), (150, 160)], fill=30, width=14)  # a 1, centred at x = 0.25 of the photo
    pen.line([(380, 40), (460, 40), (410, 160)], fill=30, width=14, joint="curve")  # a 7, near 0.7
    photo.save(tmp_path / "seventeen.png")
    page.set_input_files("#file", tmp_path / "seventeen.png")
    answered(page)
    expect(page.locator(".digit-box")).to_have_count(2)
    boxes = [page.locator(".digit-box").nth(i).bounding_box() for i in range(2)]
    for box, centre in zip(boxes, (0.25, 0.70)):
        assert (box["x"] + box["width"] / 2 - canvas["x"]) / canvas["width"] == pytest.approx(centre, abs=0.04)
        top, bottom = ((y - canvas["y"]) / canvas["height"] for y in (box["y"], box["y"] + box["height"]))
        assert 1 / 3 < top < bottom < 2 / 3  # within the photo's band: 600x200 fills a third of the square
    assert page.locator("#top").text_content() == "17"

    switch.click()  # back to one digit: the boxes go, one answer for the whole drawing comes
    expect(page.locator(".digit-box")).to_have_count(0)
    assert page.locator("#draw-title").text_content() == "Draw one digit"
    answered(page)
    assert page.locator("#bars").is_visible() and page.locator("#verdict").text_content() != ""
    assert sum(width for _, width, _ in bars(page)) == pytest.approx(100, abs=3)
    page.locator("#clear").click()
    assert_idle(page)
    assert console.errors == []
    context.close()


# ---------- inside the network ----------

MAP_PIXELS = """() => [...document.querySelectorAll("#layers canvas.map")].map((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const grey = [];
    for (let i = 0; i < d.length; i += 4) grey.push(d[i + 3] ? d[i] : -1);  // -1: nothing drawn
    return grey;
})"""


def drawn_maps(page, after: int) -> list[list[int]]:
    """Every map canvas's pixels once the panel has drawn an answer newer than `after`."""
    deadline = time.monotonic() + 15  # (wait_for_function would need eval, which the page's CSP forbids)
    while int(page.locator("#layers").get_attribute("data-drawn")) <= after:
        assert time.monotonic() < deadline, "the feature maps were not drawn"
        page.wait_for_timeout(50)
    answered(page)
    page.wait_for_timeout(200)  # sprites of a request already out may still be decoding
    return page.evaluate(MAP_PIXELS)


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_inside_the_network_draws_live_feature_maps(server_url, browser, tmp_path, size):
    context, page, console = open_page(browser, size, server_url)
    inside = page.locator("#inside")
    summary = page.locator("#inside summary")
    if size == "phone":  # collapsed on a phone; the summary opens it, from the keyboard too
        assert inside.get_attribute("open") is None
        summary.focus()
        page.keyboard.press("Enter")
    expect(inside).to_have_attribute("open", "")
    expect(page.locator("#inside-note")).to_contain_text("Draw")

    page.evaluate("window.scrollTo(0, 0)")  # the canvas in view
    draw(page, size, SEVEN)
    first = drawn_maps(page, 0)
    wait_for_guess(page, "7")  # the explain answer drives the prediction panel too
    titles = page.locator("#layers .layer-title").all_text_contents()
    assert [t.split()[0] for t in titles] == ["C1", "S2", "C3", "S4", "C5", "F6", "output"]
    assert titles[0].startswith("C1 ") and "@28x28" in titles[0]
    # Drawn and not blank: every map has pixels, and most maps are not one flat grey.
    assert all(min(m) >= 0 for m in first), "a map was never drawn"
    varied = sum(max(m) - min(m) > 16 for m in first)
    assert varied >= len(first) // 2, f"only {varied} of {len(first)} maps have any contrast"
    expect(page.locator("#inside-input")).to_be_visible()

    # Hover (or tap) a C1 map: its value range and its 5x5 kernel.
    c1 = page.locator("#layers canvas.map").nth(2)
    if size == "phone":
        c1.tap()
    else:
        c1.hover()
    expect(page.locator("#map-info")).to_contain_text("C1 map 3 of")
    expect(page.locator("#map-info canvas.kernel")).to_have_count(1)
    # Keyboard: a C3 map takes focus and shows its kernels from the S2 maps it reads.
    c3 = page.locator("#layers li").nth(2).locator("canvas.map").first
    c3.focus()
    expect(page.locator("#map-info")).to_contain_text("C3 map 1 of")
    assert page.locator("#map-info canvas.kernel").count() >= 3

    # The attribution overlay toggles on the 28x28 view.
    attr = page.locator("#inside-attr")
    assert not attr.is_visible()
    page.locator("#attr-toggle").check()
    expect(attr).to_be_visible()
    assert attr.get_attribute("src").startswith("data:image/png;base64,")
    # The preprocessing stages, one click away.
    before = int(page.locator("#layers").get_attribute("data-drawn"))
    page.locator("#steps-toggle").click()
    expect(page.locator("#steps li").first).to_be_visible(timeout=15_000)
    assert page.locator("#steps li").count() >= 5
    assert "fitted 28x28" in " ".join(page.locator("#steps li span").all_text_contents())
    page.screenshot(path=tmp_path / f"inside-{size}.png", full_page=True)

    # Drawing more changes the maps, live.
    first = drawn_maps(page, before)  # with the steps
    before = int(page.locator("#layers").get_attribute("data-drawn"))
    page.evaluate("window.scrollTo(0, 0)")  # the canvas back in view (the panel is below it)
    draw(page, size, [(0.30, 0.55), (0.72, 0.55)])  # a bar across: a crossed 7
    second = drawn_maps(page, before)
    page.screenshot(path=tmp_path / f"inside-{size}-2.png", full_page=True)
    assert len(second) == len(first)
    assert sum(a != b for a, b in zip(first, second)) >= len(first) // 2
    expect(attr).to_be_visible()

    page.locator("#clear").click()
    assert_idle(page)
    expect(page.locator("#inside-input")).to_be_hidden()
    assert console.errors == []
    context.close()


# ---------- the 28x28 box before the first stroke; Fashion-MNIST's names fit ----------

@pytest.fixture(scope="module")
def zoo_url():
    proc, url = start_server("--checkpoint", "mnist", "--checkpoint", "fashion-mnist")
    yield url
    stop_server(proc)


SEEN_INK = """() => {  // the largest grey level of the 28x28 image shown (white ink on black)
    const img = document.getElementById("seen");
    const c = document.createElement("canvas");
    c.width = c.height = 28;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, 28, 28).data;
    let most = 0;
    for (let i = 0; i < d.length; i += 4) most = Math.max(most, d[i]);
    return most;
}"""


def fits(page, selector: str) -> dict:
    """The element's content does not overflow it (no scrolling, no ellipsis, nothing sticking out)."""
    return page.evaluate("""(selector) => {
        const e = document.querySelector(selector);
        const box = e.getBoundingClientRect();
        const range = document.createRange();
        range.selectNodeContents(e);
        const ink = range.getBoundingClientRect();
        return {scroll: e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight,
                inside: ink.left >= box.left - 1 && ink.right <= box.right + 1
                        && ink.top >= box.top - 1 && ink.bottom <= box.bottom + 1};
    }""", selector)


# How many lines `word` takes in the element `selector` (its text ranges' distinct line tops), -1 if absent.
LINES = """([selector, word]) => {
    const e = document.querySelector(selector);
    const walker = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
    const nodes = [];
    let text = "";
    while (walker.nextNode()) { nodes.push([walker.currentNode, text.length]); text += walker.currentNode.data; }
    const at = text.indexOf(word);
    if (at < 0) return -1;
    const range = document.createRange();
    const place = (pos, set) => {
        for (const [node, start] of nodes) if (pos <= start + node.data.length) return set(node, pos - start);
    };
    place(at, (node, offset) => range.setStart(node, offset));
    place(at + word.length, (node, offset) => range.setEnd(node, offset));
    const rects = [...range.getClientRects()].filter((r) => r.width > 0);
    const tops = rects.map((r) => r.top).sort((a, b) => a - b);
    const tall = Math.min(...rects.map((r) => r.height));
    return tops.filter((top, i) => i === 0 || top - tops[i - 1] > tall / 2).length;
}"""


@pytest.mark.parametrize("model", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_seen_box_says_what_it_shows_until_something_is_drawn(zoo_url, browser, tmp_path, size, model):
    context, page, console = open_page(browser, size, zoo_url, FIT_SIZES)
    if model != "mnist":
        page.select_option("#model", model)
    hint, seen = page.locator("#seen-empty"), page.locator("#seen")
    # Before the first stroke: words, not a black square (read by screen readers too).
    expect(hint).to_be_visible()
    assert seen.is_hidden() and page.locator("#seen-figure").get_attribute("aria-hidden") is None
    assert hint.get_attribute("aria-hidden") is None
    words = hint.text_content()
    assert "28\u00a0×\u00a028 image the model sees" in words
    assert words.startswith("Draw a digit:" if model == "mnist" else "Draw an item of clothing:")
    if model != "mnist":
        assert "digit" not in words and "digit" not in page.locator("h1").text_content()
    assert fits(page, "#seen-empty") == {"scroll": True, "inside": True}
    page.locator("#seen-figure").screenshot(path=tmp_path / f"seen-hint-{size}-{model}.png")

    page.evaluate("window.scrollTo(0, 0)")  # the canvas in view
    draw(page, size, SEVEN)
    answered(page)
    expect(seen).to_be_visible()
    assert hint.is_hidden() and page.locator("#seen-figure figcaption").is_visible()
    assert page.evaluate("document.getElementById('seen').naturalWidth") == 28
    assert page.evaluate(SEEN_INK) > 128  # the drawing is in it, not a blank square

    page.locator("#clear").click()
    expect(hint).to_be_visible()
    assert hint.text_content() == words and seen.is_hidden()
    assert page.locator("#seen-figure figcaption").is_hidden()
    assert console.errors == []
    context.close()


def answer(names: list[str], top: int, runner_up: int, unsure: bool = False) -> dict:
    """A predict object as /api/predict sends it (lenet.serve.app's Prediction): `top` first."""
    probabilities = [0.002] * len(names)
    probabilities[top], probabilities[runner_up] = (0.52, 0.46) if unsure else (0.95, 0.034)
    top_k = [{"index": i, "name": names[i], "probability": probabilities[i]} for i in (top, runner_up)]
    return {"path": "upload", "prediction": top, "name": names[top], "confidence": probabilities[top],
            "probabilities": probabilities, "top_k": top_k, "status": "unsure" if unsure else "ok",
            **({"between": [top, runner_up]} if unsure else {})}


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_fashion_names_stay_whole_and_fit_their_boxes(zoo_url, browser, tmp_path, size):
    """Every class name as the answer, and the longest "A or B?" pairs: each name on one line
    ("T-shirt/top" not broken at its slash or hyphen), nothing overflowing its box. The answers
    come from a route (every class in turn; the real model's answers to a drawing vary), in the
    API's own shape."""
    context, page, console = open_page(browser, size, zoo_url, FIT_SIZES)
    width = FIT_SIZES[size]["viewport"]["width"]
    page.select_option("#model", "fashion-mnist")
    assert [label for label, _, _ in bars(page)] == FASHION
    served = {"answer": None}
    page.route(re.compile(r"/api/(predict|explain)\?"),
               lambda route: route.fulfill(status=200, content_type="application/json",
                                           body=json.dumps(served["answer"])))

    def check(text: str, words: list[str]) -> None:
        for word in words:
            assert page.evaluate(LINES, ["#top", word]) == 1, f"{word!r} broken in {text!r} ({size})"
        assert fits(page, "#top") == {"scroll": True, "inside": True}, f"{text!r} overflows ({size})"
        if size == "phone":  # the copy next to the buttons
            assert fits(page, "#mini") == {"scroll": True, "inside": True}
            box = page.locator("#mini").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width

    cases = [([i], answer(FASHION, i, (i + 1) % 10)) for i in range(10)]
    cases += [([a, b], answer(FASHION, a, b, unsure=True)) for a, b in [(9, 0), (0, 9), (2, 7)]]
    for k, (which, served["answer"]) in enumerate(cases):
        text = " or ".join(FASHION[i] for i in which) + ("?" if len(which) > 1 else "")
        page.evaluate("window.scrollTo(0, 0)")
        tap(page, size, 0.3 + 0.04 * k, 0.5)
        wait_for_guess(page, text)
        answered(page)
        check(text, [FASHION[i] for i in which])
        if which == [9, 0]:
            page.locator("#result").screenshot(path=tmp_path / f"fashion-unsure-{size}.png")

    for name in FASHION:  # the bars' labels: one line each, no ellipsis
        assert page.evaluate(LINES, ["#bars", name]) == 1, f"{name!r} broken in the bars ({size})"
    assert page.evaluate("""() => [...document.querySelectorAll('#bars .label')].every(
        (e) => e.scrollWidth <= e.clientWidth)""")
    assert page.locator("h1").text_content() == "LeNet-5 clothing recognizer"
    for word in ("LeNet-5", "clothing recognizer"):
        assert page.evaluate(LINES, ["h1", word]) == 1
    assert fits(page, "h1") == {"scroll": True, "inside": True}
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing sticks out sideways
    assert console.errors == []
    context.close()
