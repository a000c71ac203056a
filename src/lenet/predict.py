"""Checkpoint + preprocessing -> class probabilities, for images, bytes, files and folders.

    lenet predict digit.png photos/ [--checkpoint C] [--top-k K] [--json] [--save-input DIR]

    from lenet.predict import Predictor
    Predictor().predict_images([Image.open("seven.jpg")])   # [{"prediction": 7, ...}]

Many files go through the model in batches of BATCH (one forward pass each); a file that
cannot be read gets one line on stderr and the others are still predicted.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from pathlib import Path
from typing import IO, Iterator

import torch
from PIL import Image

from lenet.checkpoint import atomic_write, load_checkpoint
from lenet.errors import LenetError
from lenet.models import get_spec, prepare_input
from lenet.preprocess import NO_DIGIT, Preprocessed, open_image, preprocess, to_png

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
    """A checkpoint loaded once; images in, predict objects (DESIGN.md) out."""

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu"):
        model, self.meta = load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model_name: str = self.meta["model"]
        self.spec = get_spec(self.model_name)  # normalisation and input size come from here
        self.dataset: str = self.meta.get("dataset", "unknown")
        classes = self.meta.get("model_args", {}).get("num_classes", 10)
        self.class_names: list[str] = list(self.meta.get("class_names") or map(str, range(classes)))
        self.digits = is_digit_model(self.meta)
        self.blank_name = NO_DIGIT if self.digits else NOTHING

    def preprocess(self, img: Image.Image) -> Preprocessed:
        """The preprocessing this model's dataset was made with (Fashion: no centre of mass)."""
        return preprocess(img, center_by_mass=self.digits, digits=self.digits)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, C) softmax probabilities, one forward pass."""
        x = prepare_input(images.to(self.device), self.spec)  # (B, 1, S, S) normalised
        return torch.softmax(self.model(x).float(), dim=1).cpu()

    def answers(self, items: list[Preprocessed], top_k: int = 3) -> list[dict]:
        """Preprocessed images -> predict objects; blanks get prediction None, no guess."""
        found = [i for i, p in enumerate(items) if p.image is not None]
        probs = self.probabilities(torch.stack([items[i].image for i in found])) if found else None
        k = max(1, min(top_k, len(self.class_names)))
        results = [{"prediction": None, "name": self.blank_name, "confidence": None,
                    "probabilities": None, "top_k": [], "reason": p.reason} for p in items]
        for row, i in enumerate(found):
            p = probs[row]  # (C,)
            values, indices = p.topk(k)
            best = int(indices[0])
            results[i] = {
                "prediction": best, "name": self.class_names[best], "confidence": round(float(values[0]), 6),
                "probabilities": [round(float(v), 6) for v in p],
                "top_k": [{"index": int(j), "name": self.class_names[int(j)], "probability": round(float(v), 6)}
                          for v, j in zip(values, indices)],
                "inverted": items[i].inverted,
            }
        return results

    def predict_images(self, images: list[Image.Image], top_k: int = 3) -> list[dict]:
        """PIL images -> one predict object each, all in one batched forward pass."""
        return self.answers([self.preprocess(img) for img in images], top_k)

    def predict_bytes(self, data: bytes, name: str = "upload", top_k: int = 3,
                      include_input: bool = False) -> dict:
        """Encoded image bytes -> predict object (+ "input_png" data URL: what the model saw)."""
        seen = self.preprocess(open_image(data, name))
        result = self.answers([seen], top_k)[0]
        if include_input:
            result["input_png"] = png_data_url(seen.image)
        return result


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
    copy = out_dir / rel

    def taken(c: Path) -> bool:  # by this run, or by a file the user already has: never overwrite
        return any(p in used or p.exists() for p in (c, input_name(c)))

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


def input_name(copy: Path) -> Path:
    """scan.jpg -> scan.jpg.input.png: distinct from scan.png's, so two never collide."""
    return copy.with_name(copy.name + ".input.png")


def format_row(path: str, result: dict, width: int) -> str:
    """One line of the readable table."""
    if result["prediction"] is None:
        return f"{path:<{width}}  {'-':<12} {'-':>6}  {result['name']}"
    others = "  ".join(f"{t['name']} {t['probability']:.1%}" for t in result["top_k"])
    return f"{path:<{width}}  {result['name']:<12} {result['confidence']:>6.1%}  {others}"


def predict_command(inputs: list[str], checkpoint: str | None, top_k: int, as_json: bool,
                    save_input: str | None, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """`lenet predict`: print a JSON line or a table row per image, one stderr line per
    input that failed. Exit code: 0 all predicted, 1 some failed, 2 none could be read."""
    out, err = out or sys.stdout, err or sys.stderr  # looked up now: callers may have redirected them
    if top_k < 1:
        raise LenetError(f"--top-k must be at least 1, got {top_k}")
    if not inputs:
        raise LenetError("give at least one image file or folder")
    out_dir = Path(save_input) if save_input else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise LenetError(f"{out_dir}: --save-input needs a folder, this is a file")
    predictor = Predictor(checkpoint)
    done = failed = 0
    used: set[Path] = set()
    header = False
    # --save-input inside an input folder: its copies are not inputs (they would be found again)
    for chunk in _chunks(find_images(inputs, skip=out_dir), BATCH):
        ready = []  # (shown name, file, root, preprocessed)
        for shown, file, root, error in chunk:
            try:
                if error:
                    raise LenetError(error)
                ready.append((shown, file, root, predictor.preprocess(open_image(file, shown))))
            except LenetError as exc:
                failed += 1
                print(f"lenet: error: {exc}", file=err, flush=True)
        results = predictor.answers([seen for *_, seen in ready], top_k)
        width = max([len(shown) for shown, *_ in ready] + [4])
        if ready and not as_json and not header:
            print(f"{'path':<{width}}  {'prediction':<12} {'conf':>6}  top {min(top_k, len(predictor.class_names))}",
                  file=out)
            header = True
        for (shown, file, root, seen), result in zip(ready, results):
            if out_dir is not None:
                result["saved_input"] = save_seen(out_dir, file, root, seen, used)
            print(json.dumps({"path": shown, **result}) if as_json else format_row(shown, result, width), file=out)
            done += 1
        out.flush()
    if failed and not done:
        return 2
    return 1 if failed else 0
