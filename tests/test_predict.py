"""Predictor and `lenet predict`: the output contract, batching, folders, every bad input.

Fast tests use an untrained checkpoint written here (the contract does not depend on the
weights); the slow ones use the embedded default model.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from lenet import predict as predict_module
from lenet import prepare as prepare_module
from lenet.checkpoint import save_checkpoint
from lenet.errors import LenetError
from lenet.models import create_model
from lenet.predict import Predictor, predict_command
from lenet.preprocess import NO_DIGIT, OUT, preprocess

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def write_checkpoint(path: Path, dataset: str = "mnist", class_names: list[str] | None = None) -> Path:
    torch.manual_seed(0)
    model = create_model("lenet5-bn").eval()
    names = class_names or [str(i) for i in range(10)]
    save_checkpoint(path, model, {"model": "lenet5-bn", "model_args": {}, "dataset": dataset, "class_names": names})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits.safetensors")


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor(checkpoint)


def digit_image(text: str = "7", size: int = 120, dark_on_light: bool = True) -> Image.Image:
    """A digit rendered in DejaVu Sans (shipped with matplotlib, so always there)."""
    import matplotlib

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), int(size * 0.6))
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    img = Image.new("L", (size, size), paper)
    ImageDraw.Draw(img).text((size / 2, size / 2), text, font=font, fill=ink, anchor="mm")
    return img


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the data is a few bytes of nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def blank_image() -> Image.Image:
    return Image.new("RGB", (100, 80), (250, 250, 245))


def save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward passes and their batch sizes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x):
        self.batches.append(len(x))
        return self.model(x)


def run(inputs, checkpoint, *, top_k=3, as_json=True, save_input=None) -> tuple[int, list, str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict_command([str(i) for i in inputs], str(checkpoint), top_k, as_json,
                           None if save_input is None else str(save_input), out=out, err=err)
    lines = out.getvalue().splitlines()
    return code, [json.loads(line) for line in lines] if as_json else lines, err.getvalue()


# --- Predictor -------------------------------------------------------------------------------

def test_predictor_attributes(predictor, checkpoint):
    assert predictor.model_name == "lenet5-bn" and predictor.dataset == "mnist"
    assert predictor.class_names == [str(i) for i in range(10)] and predictor.digits
    assert predictor.meta["path"] == str(checkpoint)


def test_predict_images_is_one_batched_forward_pass(predictor):
    batches = []
    hook = predictor.head.register_forward_hook(lambda module, args, out: batches.append(len(out)))
    try:
        results = predictor.predict_images([digit_image(str(d)) for d in range(6)] + [blank_image()], top_k=3)
    finally:
        hook.remove()
    assert batches == [6]  # the blank needs no forward pass
    assert len(results) == 7


def test_predict_object_contract(predictor):
    found, blank = predictor.predict_images([digit_image("3"), blank_image()], top_k=3)
    probs = found["probabilities"]
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert found["prediction"] == int(np.argmax(probs)) and found["name"] == str(found["prediction"])
    assert found["confidence"] == pytest.approx(max(probs))
    assert [t["index"] for t in found["top_k"]] == list(np.argsort(probs)[::-1][:3])
    assert all(set(t) == {"index", "name", "probability"} for t in found["top_k"])
    assert blank["prediction"] is None and blank["name"] == NO_DIGIT
    assert blank["confidence"] is None and blank["probabilities"] is None and blank["top_k"] == []
    assert blank["reason"].startswith(NO_DIGIT)
    assert found["status"] in ("ok", "unsure", "not_a_digit") and blank["status"] == "no_digit"
    assert found["between"] is None or (found["status"] == "unsure" and len(found["between"]) == 2)
    assert blank["between"] is None
    json.dumps(found), json.dumps(blank)  # plain JSON types only


def test_top_k_is_clamped_to_the_classes(predictor):
    (result,) = predictor.predict_images([digit_image()], top_k=50)
    assert len(result["top_k"]) == 10
    (result,) = predictor.predict_images([digit_image()], top_k=1)
    assert len(result["top_k"]) == 1


def test_normalisation_comes_from_the_model_spec(predictor, monkeypatch):
    seen = []
    monkeypatch.setattr(predict_module, "prepare_input",
                        lambda images, spec: seen.append(spec.name) or torch.zeros(len(images), 1, 32, 32))
    predictor.predict_images([digit_image()])
    assert seen == ["lenet5-bn"]


def test_predict_takes_bytes_and_paths_and_names_bad_input(predictor, tmp_path):
    buf = io.BytesIO()
    digit_image("5").save(buf, "PNG")
    path = save(digit_image("5"), tmp_path / "five.png")
    from_bytes, from_path = predictor.predict([buf.getvalue(), path], top_k=2)
    assert len(from_bytes["top_k"]) == 2 and from_bytes["probabilities"] == from_path["probabilities"]
    with pytest.raises(LenetError, match="upload: not an image"):
        predictor.predict(b"hello")


def test_fashion_checkpoint_uses_its_class_names_and_object_preprocessing(tmp_path):
    fashion = Predictor(write_checkpoint(tmp_path / "f.safetensors", "fashion-mnist", FASHION))
    assert not fashion.digits and fashion.class_names == FASHION
    bag = Image.new("L", (100, 120), 255)
    ImageDraw.Draw(bag).rectangle((10, 30, 89, 109), fill=60)
    (result,) = fashion.predict_images([bag])
    assert result["name"] in FASHION and result["name"] == FASHION[result["prediction"]]
    seen = fashion.preprocess(bag).image[0].numpy()
    cols = np.nonzero(seen.any(0))[0]
    assert cols[-1] - cols[0] + 1 == OUT  # the object fills 28 wide, not MNIST's 20
    (blank,) = fashion.predict_images([blank_image()])
    assert blank["prediction"] is None and blank["name"] == "nothing found"


# --- lenet predict: output --------------------------------------------------------------------

def test_json_lines_for_files_and_folders_recursive_and_sorted(checkpoint, tmp_path):
    folder = tmp_path / "digits"
    save(digit_image("2"), folder / "b.png")
    save(digit_image("1"), folder / "a.png")
    save(digit_image("3").convert("RGB"), folder / "sub" / "c.jpg")
    save(blank_image(), folder / "sub" / "blank.bmp")
    (folder / "notes.txt").write_text("not an image")  # not an image suffix: skipped
    save(digit_image("4"), folder / ".hidden.png")  # hidden: skipped
    single = save(digit_image("9", dark_on_light=False), tmp_path / "nine.webp")
    code, rows, err = run([single, folder], checkpoint)
    assert code == 0 and err == ""
    assert [r["path"] for r in rows] == [str(single), str(folder / "a.png"), str(folder / "b.png"),
                                         str(folder / "sub" / "blank.bmp"), str(folder / "sub" / "c.jpg")]
    for row in rows:
        assert {"path", "prediction", "name", "confidence", "probabilities"} <= set(row)
    blank = rows[3]
    assert blank["prediction"] is None and blank["name"] == NO_DIGIT and blank["confidence"] is None
    assert all(len(r["probabilities"]) == 10 for r in rows if r["prediction"] is not None)


def test_readable_table(checkpoint, tmp_path):
    a = save(digit_image("1"), tmp_path / "one.png")
    b = save(blank_image(), tmp_path / "blank.png")
    code, lines, _ = run([a, b], checkpoint, as_json=False, top_k=2)
    assert code == 0
    assert lines[0].split()[:3] == ["path", "prediction", "conf"] and "top 2" in lines[0]
    assert lines[1].startswith(str(a)) and "%" in lines[1]
    assert lines[2].startswith(str(b)) and lines[2].endswith(NO_DIGIT)


def test_many_files_go_through_in_batches(checkpoint, tmp_path, monkeypatch):
    for i in range(7):
        save(digit_image(str(i)), tmp_path / "many" / f"{i}.png")
    monkeypatch.setattr(predict_module, "BATCH", 3)
    batches = []
    original = Predictor.infer

    def counting(self, items):
        batches.append(len(items))
        return original(self, items)

    monkeypatch.setattr(Predictor, "infer", counting)
    code, rows, _ = run([tmp_path / "many"], checkpoint)
    assert code == 0 and len(rows) == 7 and batches == [3, 3, 1]


def test_save_input_writes_the_copy_and_what_the_model_saw(checkpoint, tmp_path):
    folder = tmp_path / "in"
    save(digit_image("4"), folder / "x" / "four.png")
    save(blank_image(), folder / "blank.png")
    other = save(digit_image("6"), tmp_path / "elsewhere" / "four.png")  # same name, other folder
    out = tmp_path / "seen"
    code, rows, _ = run([folder, other], checkpoint, save_input=out)
    assert code == 0
    assert (out / "x" / "four.png").read_bytes() == (folder / "x" / "four.png").read_bytes()
    assert Image.open(out / "x" / "four.png.input.png").size == (OUT, OUT)
    assert (out / "blank.png").exists() and not (out / "blank.png.input.png").exists()  # nothing seen
    assert (out / "four.png").read_bytes() == other.read_bytes()  # mirrored names do not collide
    assert [r["saved_input"] for r in rows] == [str(out / "blank.png"), str(out / "x" / "four.png"),
                                                str(out / "four.png")]


def test_save_input_inside_the_input_folder_is_not_read_back(checkpoint, tmp_path):
    folder = tmp_path / "in"
    save(digit_image("2"), folder / "two.png")
    code, rows, _ = run([folder], checkpoint, save_input=folder / "seen")
    assert code == 0 and [r["path"] for r in rows] == [str(folder / "two.png")]
    code, rows, _ = run([folder], checkpoint, save_input=folder / "seen")  # again, now that it exists
    assert [r["path"] for r in rows] == [str(folder / "two.png")]


# --- lenet predict: bad input ----------------------------------------------------------------

def test_every_bad_input_gets_one_line_and_the_good_ones_are_still_predicted(checkpoint, tmp_path):
    good = save(digit_image("8"), tmp_path / "good.png")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "readme.md").write_text("no pictures here")
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    digit_image("1").save(buf, "PNG")
    truncated.write_bytes(buf.getvalue()[:200])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(9000, 9000))
    code, rows, err = run([tmp_path / "missing.png", empty_dir, text, truncated, bomb, good], checkpoint)
    assert code == 1
    assert [r["path"] for r in rows] == [str(good)]
    lines = err.splitlines()
    assert len(lines) == 5
    assert f"{tmp_path / 'missing.png'}: no such file or directory" in lines[0]
    assert f"{empty_dir}: no images in this folder" in lines[1]
    assert f"{text}: not an image" in lines[2]
    assert f"{truncated}: truncated or corrupt image" in lines[3]
    assert f"{bomb}: image too large" in lines[4]
    assert all(line.startswith("lenet: error: ") and "Traceback" not in line for line in lines)


def test_exit_2_when_nothing_could_be_read(checkpoint, tmp_path):
    code, rows, err = run([tmp_path / "nope.png", tmp_path / "nope2.jpg"], checkpoint)
    assert code == 2 and rows == [] and len(err.splitlines()) == 2


def test_bad_arguments_raise_lenet_error(checkpoint, tmp_path):
    good = save(digit_image(), tmp_path / "d.png")
    with pytest.raises(LenetError, match="--top-k"):
        run([good], checkpoint, top_k=0)
    with pytest.raises(LenetError, match="at least one"):
        run([], checkpoint)
    with pytest.raises(LenetError, match="--save-input needs a folder"):
        run([good], checkpoint, save_input=good)
    with pytest.raises(LenetError, match="no such checkpoint"):
        run([good], tmp_path / "none.safetensors")


# --- the embedded default (slow: needs the shipped weights) ----------------------------------

@pytest.mark.slow
def test_embedded_default_loads_without_network_and_reads_rendered_digits(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    predictor = Predictor()  # the embedded MNIST model
    assert predictor.dataset == "mnist"
    images = [digit_image(str(d), size=160, dark_on_light=d % 2 == 0) for d in range(10)]
    results = predictor.predict_images(images, top_k=1)
    assert [r["prediction"] for r in results] == list(range(10))


def test_save_input_never_overwrites_and_keeps_names_apart(tmp_path, capsys):
    from lenet.predict import predict_command

    src, out = tmp_path / "in", tmp_path / "seen"
    src.mkdir()
    out.mkdir()
    for name in ("scan.png", "scan.jpg"):
        img = Image.new("L", (60, 60), 255)
        ImageDraw.Draw(img).line([(30, 8), (30, 52)], fill=0, width=6)
        img.save(src / name)
    (out / "scan.png").write_bytes(b"the user's own file")
    assert predict_command([str(src)], None, 3, True, str(out)) == 0
    assert (out / "scan.png").read_bytes() == b"the user's own file"
    assert (out / "scan-2.png").is_file() and (out / "scan-2.png.input.png").is_file()
    assert (out / "scan.jpg.input.png").is_file()
    capsys.readouterr()
    assert predict_command([str(out)], None, 3, True, str(out)) == 2  # would feed on its own output
    assert "is the --save-input folder" in capsys.readouterr().err



# A 1 kB JPEG whose EXIF block has a malformed tag: ImageOps.exif_transpose raised struct.error on it.
BAD_EXIF_JPEG = "/9j/4AAQSkZJRgABAQAAAQABAAD/4QBORXhpZgAATU0AKgAAAAgAAwEPAAIAAAAEY2FtAAESAAMAAAABAAaKAAEKAAIAAAAUAAAAMgAAAAAyMDIwOjAxOjAxQDAwOjAwOoYwAP/bAEMACAYGBwYFCAcHBwkJCAoMFA0MCwsMGRITDxQdGh8eHRocHCAkLicgIiwjHBwoNyksMDE0NDQfJzk9ODI8LjM0Mv/bAEMBCQkJDAsMGA0NGDIhHCEyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMv/AABEIAB4AKAMBIgACEQEDEQH/xAAfAAABBQEBAQEBAQAAAAAAAAAAAQIDBAUGBwgJCgv/xAC1EAACAQMDAgQDBQUEBAAAAX0BAgMABBEFEiExQQYTUWEHInEUMoGRoQgjQrHBFVLR8CQzYnKCCQoWFxgZGiUmJygpKjQ1Njc4OTpDREVGR0hJSlNUVVZXWFlaY2RlZmdoaWpzdHV2d3h5eoOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4eLj5OXm5+jp6vHy8/T19vf4+fr/xAAfAQADAQEBAQEBAQEBAAAAAAAAAQIDBAUGBwgJCgv/xAC1EQACAQIEBAMEBwUEBAABAncAAQIDEQQFITEGEkFRB2FxEyIygQgUQpGhscEJIzNS8BVictEKFiQ04SXxFxgZGiYnKCkqNTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqCg4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2dri4+Tl5ufo6ery8/T19vf4+fr/2gAMAwEAAhEDEQA/APf6838U/EfxJoPiO70yw+Hmq6taw7Nl7AZNkuUVjjETDgkjqelekUUAeP8A/C3/ABh/0SbXPzm/+MVXj+O9/B4h0/SNX8C32mSXcsaYmmkMgR3271j8kM/fAHUjA5r0jxp4ss/BXhe61q8TzfKwkMAcI00jHCqCfxJxkhQxwcYrzf4R+EbzWNYuPiV4lWddTvZXksYWJCJG648wZYsV2koingKM85UgA9oooooAKjnnhtbeW4uJY4YIkLySSMFVFAySSeAAOc1JVPVdKsdc0u40zU7aO5s7hNksT9GH8wQcEEcggEYIoA8I022m+PHxBbVdQtbu28JaUhjhj3Eec2QdhOcB2ByxToqquclWr6DrL8OaBY+FvD9noumrILS1QqnmNuZiSWZifUsSeMDngAcVqUAFFFFAH//Z"


def test_malformed_exif_is_read_as_stored(tmp_path):
    from lenet.imagefile import open_image

    path = tmp_path / "odd.jpg"
    path.write_bytes(base64.b64decode(BAD_EXIF_JPEG))
    assert open_image(path).size[0] > 0


# --- one bad file never sinks a run (issue 11, finding 6) --------------------------------------

def corrupt_dds() -> bytes:
    """192 bytes: a DDS header whose pixel-format flags are 0, cut short (Pillow raised
    NotImplementedError on it, which ended `lenet predict` with a traceback)."""
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (200, 10, 10, 255)).save(buf, "DDS")
    data = bytearray(buf.getvalue()[:192])
    data[80:84] = b"\0\0\0\0"  # DDS_PIXELFORMAT.dwFlags
    return bytes(data)


def float_tiff(value: float) -> bytes:
    """A float TIFF (mode F) of a dark bar on paper with a block of `value` (NaN, Inf) pixels."""
    arr = np.full((40, 40), 230.0, np.float32)
    arr[8:32, 18:22] = 20.0
    arr[2:6, 2:6] = value
    buf = io.BytesIO()
    Image.fromarray(arr, "F").save(buf, "TIFF")
    return buf.getvalue()


def test_a_corrupt_dds_or_a_float_tiff_with_inf_does_not_sink_the_good_files(checkpoint, tmp_path):
    good = save(digit_image("8"), tmp_path / "good.png")
    evil = tmp_path / "evil.dds"
    evil.write_bytes(corrupt_dds())
    inf, nan = tmp_path / "inf.tif", tmp_path / "nan.tif"
    inf.write_bytes(float_tiff(float("inf")))
    nan.write_bytes(float_tiff(float("nan")))
    code, rows, err = run([good, evil, inf, nan], checkpoint)
    assert code == 1
    assert [r["path"] for r in rows] == [str(good), str(inf), str(nan)]  # non-finite pixels are sanitised
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lenet: error: {evil}: ") and "Traceback" not in err


def test_a_file_that_fails_unexpectedly_gets_one_line_and_the_others_are_predicted(checkpoint, tmp_path,
                                                                                  monkeypatch):
    good, bad = save(digit_image("3"), tmp_path / "a.png"), save(digit_image("5"), tmp_path / "b.png")
    marked = digit_image("5")
    marked.putpixel((1, 0), 254)
    marked.save(bad)
    monkeypatch.setattr(prepare_module, "preprocess", fragile_preprocess)  # where lenet predict preprocesses a file
    code, rows, err = run([good, bad], checkpoint)
    assert code == 1 and [r["path"] for r in rows] == [str(good)]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lenet: error: {bad}: ") and "ValueError" in lines[0]


def fragile_preprocess(img, mode):
    """preprocess, except that an image marked with pixels 255, 254 at its top left meets a bug."""
    if img.getpixel((0, 0)) == 255 and img.getpixel((1, 0)) == 254:
        raise ValueError("a bug in a preprocessing stage")
    return preprocess(img, mode)


# --- lenet predict on every core ---------------------------------------------------------------

def test_worker_processes_give_the_same_answers_in_input_order(checkpoint, tmp_path, monkeypatch):
    """A folder big enough for worker processes: the same JSON lines, in the same order, as one
    process gives; a file that fails in a worker (corrupt, or a bug) gets its one line."""
    folder = tmp_path / "many"
    for i in range(12):
        save(digit_image(str(i % 10), size=60 + 7 * i, dark_on_light=i % 3 > 0), folder / f"{i:02d}.png")
    (folder / "05.png").write_bytes(b"not a picture")  # the sixth file: not an image
    marked = digit_image("8")
    marked.putpixel((1, 0), 254)
    marked.save(folder / "09.png")
    monkeypatch.setattr(prepare_module, "preprocess", fragile_preprocess)
    monkeypatch.setattr(prepare_module, "cpu_cores", lambda: 1)
    one = run([folder], checkpoint)
    monkeypatch.setattr(prepare_module, "cpu_cores", lambda: 2)
    used = []
    real_init = prepare_module.Preparer.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        used.append(self.pool is not None)

    monkeypatch.setattr(prepare_module.Preparer, "__init__", spy)
    several = run([folder], checkpoint)
    assert used == [True]
    assert several == one
    code, rows, err = several
    assert code == 1 and [Path(r["path"]).name for r in rows] == [f"{i:02d}.png" for i in range(12) if i not in (5, 9)]
    lines = err.splitlines()
    assert len(lines) == 2 and "05.png: not an image" in lines[0] and "09.png: could not be processed" in lines[1]


def test_a_worker_that_dies_does_not_sink_the_others(checkpoint, tmp_path, monkeypatch):
    """A decoder crash kills its worker process: the files left are prepared in the main process."""
    folder = tmp_path / "many"
    for i in range(10):
        save(digit_image(str(i)), folder / f"{i}.png")
    parent = os.getpid()

    def crashing(img, mode):
        if os.getpid() != parent and img.size == (120, 120):
            os._exit(3)  # as a segfault in a C decoder would end it
        return preprocess(img, mode)

    monkeypatch.setattr(prepare_module, "preprocess", crashing)
    monkeypatch.setattr(prepare_module, "cpu_cores", lambda: 2)
    code, rows, err = run([folder], checkpoint)
    assert code == 0 and err == "" and [Path(r["path"]).name for r in rows] == [f"{i}.png" for i in range(10)]


def test_prepare_file_returns_a_line_never_raises(tmp_path):
    seen, error = prepare_module.prepare_file(tmp_path / "nope.png", "nope.png", "digits")
    assert seen is None and error.startswith("lenet: error: nope.png: ")
    good = save(digit_image("2"), tmp_path / "two.png")
    seen, error = prepare_module.prepare_file(good, "two.png", "digits")
    assert error is None and isinstance(seen.image, np.ndarray) and seen.image.shape == (1, OUT, OUT)


def test_save_input_shortens_names_too_long_for_the_file_system(checkpoint, tmp_path):
    folder = tmp_path / "in"
    names = ["d" * 241 + ".png", "d" * 246 + ".png", "é" * 120 + "x.png"]  # 245, 250 bytes; 245 bytes of UTF-8
    for name in names:
        save(digit_image("1"), folder / name)
    out = tmp_path / "seen"
    code, rows, err = run([folder], checkpoint, save_input=out)
    assert code == 0 and err == "" and len(rows) == 3
    saved = [Path(r["saved_input"]) for r in rows]
    assert len(set(saved)) == 3  # distinct names (a hash of the whole name keeps them apart)
    for copy in saved:
        assert copy.parent == out and copy.suffix == ".png" and copy.is_file()
        assert len(Path(str(copy) + ".input.png").name.encode()) <= 255
        assert Path(str(copy) + ".input.png").is_file()
    code, rows, _ = run([folder], checkpoint, save_input=out)  # again: never overwrites, still short
    assert code == 0 and not set(Path(r["saved_input"]) for r in rows) & set(saved)
