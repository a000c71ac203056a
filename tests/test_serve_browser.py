"""The drawing page in a real browser: `lenet serve` on a free port, Debian's Chromium headless.

    pytest -m slow tests/test_serve_browser.py      # needs: apt-get install chromium

Draws a 7 with pointer events (a mouse, then a finger on a phone-sized page), uploads a
photo with the file picker and another by drag-and-drop, clears with the button and the
keyboard, and fails on any browser console error. Screenshots go to the test's temp folder.
"""

from __future__ import annotations

import base64
import io
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

from lenet.checkpoint import save_checkpoint
from lenet.models import create_model

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: no GPU, no first-run pages, no calls home (the machine may be offline).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SEVEN = [(0.27, 0.24), (0.50, 0.23), (0.74, 0.23), (0.60, 0.52), (0.46, 0.84)]  # canvas fractions


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
        assert page.locator("#top").text_content() in names
        assert len([1 for _, _, best in bars(page) if best]) == 1
        page.wait_for_timeout(200)
        page.screenshot(path=tmp_path / "fashion-model.png")
        assert console.errors == []
        page.close()
    finally:
        stop_server(proc)
