"""The server's models: each Predictor loaded once, named, and run a batch at a time.

`load_models([None, "fashion-mnist", "runs/x/model.safetensors"])` gives
{"mnist": ..., "fashion-mnist": ..., "x": ...}. `run_batch` is what a worker thread runs
for a batch of queued requests: decode and preprocess each (most of the work), then one
forward pass for all of them (`Predictor.answers`), and the 28x28 input as a PNG if asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from lenet.errors import LenetError
from lenet.predict import Predictor, png_data_url
from lenet.preprocess import Preprocessed, open_image


@dataclass(frozen=True)
class Job:
    """One request's work: the uploaded bytes and what to send back."""

    data: bytes
    top_k: int = 3
    include_input: bool = False


def model_name(checkpoint: str | Path | None) -> str:
    """A short name for the model selector: the embedded name, or the file's (run's) name."""
    if checkpoint is None:
        return "mnist"
    path = Path(checkpoint)
    if path.suffix != ".safetensors":
        return str(checkpoint)  # an embedded name such as "fashion-mnist"
    # `lenet train --out runs/x` writes runs/x/model.safetensors: "x" says more than "model".
    return path.parent.name if path.stem in ("model", "last") and path.parent.name else path.stem


def load_models(checkpoints: list[str | Path | None]) -> dict[str, Predictor]:
    """Name -> Predictor, in the given order (the first is the default); names made unique."""
    models: dict[str, Predictor] = {}
    for checkpoint in checkpoints:
        base = name = model_name(checkpoint)
        n = 1
        while name in models:
            n += 1
            name = f"{base}-{n}"
        models[name] = Predictor(checkpoint)
    return models


def warm_up(predictor: Predictor) -> None:
    """One forward pass on a drawn stroke, so the first real request is not the slow one."""
    img = Image.new("L", (56, 56), 0)
    ImageDraw.Draw(img).line([(28, 8), (28, 48)], fill=255, width=5)
    predictor.predict_images([img], top_k=1)


def run_batch(predictor: Predictor, jobs: list[Job], max_pixels: int) -> list[dict | LenetError]:
    """Decode and preprocess every job's image, then one forward pass for all that decoded.

    Runs on a worker thread. A job whose bytes do not decode gets its LenetError back; the
    others are unaffected.
    """
    results: list[dict | LenetError | None] = [None] * len(jobs)
    ready: list[tuple[int, Preprocessed]] = []
    for i, job in enumerate(jobs):
        try:
            ready.append((i, predictor.preprocess(open_image(job.data, "upload", max_pixels=max_pixels))))
        except LenetError as exc:
            results[i] = exc
    if ready:
        top_k = max(jobs[i].top_k for i, _ in ready)  # then each answer is cut to its own k
        answers = predictor.answers([seen for _, seen in ready], top_k)
        for (i, seen), answer in zip(ready, answers, strict=True):
            results[i] = {"path": "upload", **answer, "top_k": answer["top_k"][:jobs[i].top_k]}
            if jobs[i].include_input:
                results[i]["input_png"] = png_data_url(seen.image)
    return results
