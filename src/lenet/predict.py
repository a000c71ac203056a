"""Checkpoint + preprocessing -> class probabilities, for images, bytes, files and folders.

    lenet predict digit.png photos/ [--checkpoint C] [--top-k K] [--json] [--save-input DIR]

    from lenet.predict import Predictor
    Predictor().predict_images([Image.open("seven.jpg")])   # [{"prediction": 7, ...}]

Many files are decoded and preprocessed on every core (lenet.prepare), then go through the model
in batches of BATCH (one forward pass each); a file that cannot be read gets one line on stderr
and the others are still predicted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator

import torch
from PIL import Image

from lenet.checkpoint import load_checkpoint
from lenet.errors import LenetError
from lenet.fileio import atomic_write
from lenet.models import prepare_input
from lenet.imagefile import as_image, open_image
from lenet.numbers import read_number
from lenet.prepare import Preparer, c_stderr_off, error_line
from lenet.preprocess import DIGITS, NO_DIGIT, OBJECTS, Preprocessed, preprocess, to_png
from lenet.trust import Trust, features

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff",
                  ".pgm", ".ppm", ".pbm", ".pnm")
BATCH = 256  # files decoded, preprocessed and classified together
NOTHING = "nothing found"  # the blank answer of a model whose classes are not digits


def is_digit_model(meta: dict) -> bool:
    """Digits get MNIST's preprocessing (20x20 box, centre of mass, stroke width)."""
    return meta.get("dataset") == "mnist" or meta.get("class_names") == [str(i) for i in range(10)]


def png_data_url(image: torch.Tensor | None) -> str | None:
    """The (1, 28, 28) model input as a PNG data URL (what the web page shows), None if blank."""
    if image is None:
        return None
    return "data:image/png;base64," + base64.b64encode(to_png(image)).decode("ascii")


class Predictor:
    """A checkpoint loaded once; images in, predict objects (`lenet predict --json`'s lines) out.

    Every answer has a `status` (lenet.trust): ok, unsure (and `between`: the two classes),
    not_a_digit, or no_digit; `confidence` and `probabilities` are temperature-calibrated.
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu"):
        model, self.meta = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.body, self.head = split_head(self.model)
        self.model_name: str = self.meta["model"]
        self.spec = model.input_spec  # normalisation and input size travel with the model
        self.dataset: str = self.meta.get("dataset", "unknown")
        classes = self.meta.get("model_args", {}).get("num_classes", 10)
        self.class_names: list[str] = list(self.meta.get("class_names") or map(str, range(classes)))
        self.digits = is_digit_model(self.meta)
        self.mode = DIGITS if self.digits else OBJECTS
        self.blank_name = NO_DIGIT if self.digits else NOTHING
        self.trust = Trust.from_meta(self.meta)

    def preprocess(self, img: Image.Image) -> Preprocessed:
        """The preprocessing this model's dataset was made with (Fashion: no centre of mass)."""
        return preprocess(img, self.mode)

    @torch.no_grad()
    def infer(self, items: list[Preprocessed]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Found images -> (logits (B, C), calibrated probabilities (B, C), detector features (B, F))."""
        images = torch.stack([p.image for p in items])  # (B, 1, 28, 28) in [0, 1]
        x = prepare_input(images.to(self.device), self.spec)  # (B, 1, S, S) normalised
        if self.body is not None:  # the penultimate features too, for the not-a-digit detector
            hidden = self.body(x).flatten(1)  # (B, F)
            logits = self.head(hidden).float().cpu()
        else:
            hidden, logits = torch.zeros(len(items), 0), self.model(x).float().cpu()
        widths = torch.tensor([p.stroke_width for p in items], dtype=torch.float32)
        feats = features(hidden.float().cpu(), logits, images.float().cpu(), widths)
        return logits, torch.softmax(logits / self.trust.temperature, dim=1), feats

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, C) calibrated probabilities, one forward pass."""
        return self.infer([Preprocessed(image) for image in images])[1]

    def answers(self, items: list[Preprocessed], top_k: int = 3) -> list[dict]:
        """Preprocessed images -> predict objects; blanks get prediction None and no_digit."""
        found = [i for i, p in enumerate(items) if p.image is not None]
        k = max(1, min(top_k, len(self.class_names)))
        results = [{"prediction": None, "name": self.blank_name, "confidence": None, "probabilities": None,
                    "top_k": [], "status": "no_digit", "between": None, "reason": p.reason} for p in items]
        if not found:
            return results
        _, probs, feats = self.infer([items[i] for i in found])
        p_not = self.trust.not_digit_probability(feats)
        for row, i in enumerate(found):
            p = probs[row]  # (C,)
            values, indices = p.topk(k)
            best = int(indices[0])
            status, between = self.trust.status(p, None if p_not is None else float(p_not[row]))
            if self.digits and items[i].bar:  # a dash or a rule: the model would call it a 2 or a 7
                status, between = "not_a_digit", None
            results[i] = {
                "prediction": best, "name": self.class_names[best], "confidence": round(float(values[0]), 6),
                "probabilities": [round(float(v), 6) for v in p],
                "top_k": [{"index": int(j), "name": self.class_names[int(j)], "probability": round(float(v), 6)}
                          for v, j in zip(values, indices)],
                "status": status, "between": between, "inverted": items[i].inverted,
            }
            if items[i].bbox is not None:
                results[i]["box"] = list(items[i].bbox)
        return results

    def predict_images(self, images: list, top_k: int = 3) -> list[dict]:
        """Images (anything `as_image` takes) -> one predict object each, one batched forward pass."""
        return self.answers([self.preprocess(as_image(img)) for img in images], top_k)

    def predict(self, x, top_k: int = 3, number: bool = False):
        """One image or a list (paths, bytes, PIL images, numpy arrays, tensors) -> a predict
        object or a list of them; number=True reads whole numbers (`number_answer`)."""
        items = x if isinstance(x, list) else [x]
        if number:
            results = [self.predict_number(item) for item in items]
        else:
            results = self.predict_images(items, top_k)
        return results if isinstance(x, list) else results[0]

    def predict_number(self, x) -> dict:
        """An image of a handwritten number -> {"number", "status", "digits": [...]}."""
        if not self.digits:
            raise LenetError(f"--number reads digits; this model's classes are {', '.join(self.class_names[:4])}, ...")
        return self.number_answer(*read_number(as_image(x), self.digit_score))

    def digit_score(self, items: list[Preprocessed]) -> list[float]:
        """How surely each image is one digit: its calibrated top probability times the
        detector's p(a digit at all) (0 for blanks); read_number's score for candidate digits."""
        found = [p for p in items if p.image is not None]
        if not found:
            return [0.0] * len(items)
        _, probs, feats = self.infer(found)
        p_not = self.trust.not_digit_probability(feats)
        top = (probs.max(dim=1).values * (1.0 if p_not is None else 1.0 - p_not)).tolist()
        return [top.pop(0) if p.image is not None else 0.0 for p in items]

    def number_answer(self, digits: list[Preprocessed], reason: str | None) -> dict:
        """read_number's digits -> the number object; `number` is null when none was found."""
        if not digits:
            return {"number": None, "status": "no_digit", "digits": [], "reason": reason}
        answers = self.answers(digits, top_k=2)
        statuses = {a["status"] for a in answers}
        status = "ok" if statuses == {"ok"} else "not_a_digit" if statuses == {"not_a_digit"} else "unsure"
        return {"number": "".join(a["name"] for a in answers), "status": status,
                "digits": [{key: a[key] for key in ("prediction", "confidence", "status", "between", "box")}
                           for a in answers]}


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Module]:
    """A Sequential ending in a Linear -> (everything before it, the Linear): the part before
    gives the penultimate features the not-a-digit detector reads. Else (None, model)."""
    layers = list(model.children())
    if isinstance(model, torch.nn.Sequential) and layers and isinstance(layers[-1], torch.nn.Linear):
        return torch.nn.Sequential(*layers[:-1]).eval(), layers[-1]
    return None, model


def find_images(inputs: list[str], skip: Path | None = None
                ) -> Iterator[tuple[str, Path | None, Path | None, str | None]]:
    """Each input -> (shown name, file, folder it came from, error): folders walked
    recursively in sorted order, keeping files with an image suffix (hidden files and the
    folder `skip` left out); a file named directly is tried whatever its suffix."""
    skip = skip.resolve() if skip is not None else None
    for text in inputs:
        path = Path(text)
        if path.is_dir() and skip is not None and path.resolve() == skip:
            yield text, None, None, f"{text}: is the --save-input folder; save elsewhere"
            continue
        if path.is_dir():
            found = False
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() != skip)
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                        found = True
                        file = Path(folder) / name
                        yield str(file), file, path, None
            if not found:
                yield text, None, None, f"{text}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"
        elif path.exists():
            yield text, path, None, None
        else:
            yield text, None, None, f"{text}: no such file or directory"


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def save_seen(out_dir: Path, file: Path, root: Path | None, seen: Preprocessed, used: set[Path]) -> str:
    """Copy `file` into out_dir (mirroring its place under `root`) and write what the model
    saw next to it as NAME.SUFFIX.input.png; never overwrites a file; returns the copy's path."""
    rel = file.relative_to(root) if root is not None else Path(file.name)
    rel = rel.with_name(short_name(rel.name))  # room for "-2", ".input.png" and the temp file's name
    copy = out_dir / rel

    def taken(c: Path) -> bool:  # by this run, or by a file the user already has: never overwrite
        try:
            return any(p in used or p.exists() for p in (c, input_name(c)))
        except OSError as exc:  # a path over the system's limit, a folder not readable
            raise LenetError(f"{c}: cannot save the input there ({exc.strerror or exc})") from None

    n = 1
    while taken(copy):  # digit.png, digit-2.png, ...
        n += 1
        copy = out_dir / rel.with_name(f"{rel.stem}-{n}{rel.suffix}")
    used.update((copy, input_name(copy)))
    atomic_write(copy, lambda tmp: shutil.copyfile(file, tmp))
    if seen.image is not None:
        png = to_png(seen.image)
        atomic_write(input_name(copy), lambda tmp: Path(tmp).write_bytes(png))
    return str(copy)


NAME_BYTES = 200  # longest name a copy gets: + "-N", ".input.png" and a temp suffix stay within 255


def short_name(name: str) -> str:
    """A file name too long to save with ".input.png" added -> its start, a short hash of the
    whole name (two long names never meet) and its suffix; a shorter name is kept as it is."""
    raw = os.fsencode(name)
    if len(raw) <= NAME_BYTES:
        return name
    suffix = Path(name).suffix if len(os.fsencode(Path(name).suffix)) <= 16 else ""
    digest = hashlib.sha256(raw).hexdigest()[:10]
    start = raw[:NAME_BYTES - len(os.fsencode(suffix)) - len(digest) - 1]
    try:
        raw.decode("utf-8")
        stem = start.decode("utf-8", "ignore")  # no half character at the cut
    except UnicodeDecodeError:  # a name that is not UTF-8: its bytes, as the file system has them
        stem = os.fsdecode(start)
    return f"{stem}-{digest}{suffix}"


def input_name(copy: Path) -> Path:
    """scan.jpg -> scan.jpg.input.png: distinct from scan.png's, so two never collide."""
    return copy.with_name(copy.name + ".input.png")


def format_row(path: str, result: dict, width: int) -> str:
    """One line of the readable table."""
    if result["prediction"] is None:
        return f"{path:<{width}}  {'-':<12} {'-':>6}  {result['name']}"
    others = "  ".join(f"{t['name']} {t['probability']:.1%}" for t in result["top_k"])
    note = {"ok": "", "unsure": "  (unsure)", "not_a_digit": "  (not a digit?)"}[result["status"]]
    return f"{path:<{width}}  {result['name']:<12} {result['confidence']:>6.1%}  {others}{note}"


def format_number_row(path: str, result: dict, width: int) -> str:
    """One line of the readable table in --number mode."""
    digits = " ".join(f"{d['prediction']}:{d['confidence']:.0%}" for d in result["digits"])
    return f"{path:<{width}}  {result['number'] or '-':<12} {result['status']:<12} {digits or result.get('reason', '')}"


def read_number_of(item: tuple, predictor: Predictor) -> tuple[tuple | None, str | None]:
    """--number: one file -> (read_number's (digits, reason), None) or (None, its error line); in
    the main process, since reading a number runs the model on its candidate digits."""
    shown, file, _, error = item
    try:
        if error:
            raise LenetError(error)
        with c_stderr_off():
            img = open_image(file, shown)
        return read_number(img, predictor.digit_score), None
    except Exception as exc:  # noqa: BLE001 - a bug met on one file must not sink the others
        return None, error_line(shown, exc)


def predict_command(inputs: list[str], checkpoint: str | None, top_k: int, as_json: bool,
                    save_input: str | None, out: IO[str] | None = None, err: IO[str] | None = None,
                    number: bool = False, workers: int | None = None) -> int:
    """`lenet predict`: print a JSON line or a table row per image, one stderr line per
    input that failed. Exit code: 0 all predicted, 1 some failed, 2 none could be read.
    number=True reads each image as a whole number (`Predictor.predict_number`); `workers`:
    processes decoding and preprocessing the files (default: one per core; 1: this one only)."""
    out, err = out or sys.stdout, err or sys.stderr  # looked up now: callers may have redirected them
    if top_k < 1:
        raise LenetError(f"--top-k must be at least 1, got {top_k}")
    if not inputs:
        raise LenetError("give at least one image file or folder")
    out_dir = Path(save_input) if save_input else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise LenetError(f"{out_dir}: --save-input needs a folder, this is a file")
    if number and out_dir is not None:
        raise LenetError("--save-input saves one digit's 28x28 input; it does not go with --number")
    items = list(find_images(inputs, skip=out_dir))  # --save-input inside an input folder: its copies are not inputs
    with Preparer(0 if number else sum(error is None for *_, error in items), workers) as prepare:  # forks before the model loads
        predictor = Predictor(checkpoint)
        if number and not predictor.digits:
            raise LenetError(f"--number reads digits; {predictor.dataset} models have other classes")
        return _predict_all(items, prepare, predictor, top_k, as_json, out_dir, out, err, number)


def _predict_all(items: list[tuple], prepare: Preparer, predictor: Predictor, top_k: int, as_json: bool,
                 out_dir: Path | None, out: IO[str], err: IO[str], number: bool) -> int:
    """predict_command's work: files prepared by `prepare` (worker processes), then BATCH at a
    time through the model, printed in input order."""
    done = failed = 0
    used: set[Path] = set()
    header = False
    prepared = ((item, read_number_of(item, predictor)) for item in items) if number else prepare(items, predictor.mode.name)
    for chunk in _chunks(prepared, BATCH):
        ready = []  # (shown name, file, root, preprocessed, or read_number's digits and reason)
        for (shown, file, root, _), (seen, error) in chunk:
            if error:
                failed += 1
                print(error, file=err, flush=True)
            else:
                ready.append((shown, file, root, seen))
        if number:
            results = [predictor.number_answer(*found) for *_, found in ready]
        else:
            results = predictor.answers([seen for *_, seen in ready], top_k)
        width = max([len(shown) for shown, *_ in ready] + [4])
        if ready and not as_json and not header:
            print(f"{'path':<{width}}  {'number':<12} {'status':<12} digits" if number else
                  f"{'path':<{width}}  {'prediction':<12} {'conf':>6}  top {min(top_k, len(predictor.class_names))}",
                  file=out)
            header = True
        for (shown, file, root, seen), result in zip(ready, results):
            if out_dir is not None:
                try:  # its answer is still printed; the run ends with exit code 1
                    result["saved_input"] = save_seen(out_dir, file, root, seen, used)
                except LenetError as exc:
                    failed += 1
                    print(f"lenet: error: {exc}", file=err, flush=True)
            row = format_number_row if number else format_row
            print(json.dumps({"path": shown, **result}) if as_json else row(shown, result, width), file=out)
            done += 1
        out.flush()
    if failed and not done:
        return 2
    return 1 if failed else 0
