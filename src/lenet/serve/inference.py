"""The server's models: each Predictor loaded once, named, and run a batch at a time.

`load_models([None, "fashion-mnist", "runs/x/model.safetensors"])` gives
{"mnist": ..., "fashion-mnist": ..., "x": ...}. A request is `prepare`d (decoded and
preprocessed, on one of a few threads: that is most of the work), then queued; the
inference thread runs `run_batch` on whatever queued: one forward pass for all of them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from lenet.predict import Predictor
from lenet.preprocess import Preprocessed, open_image, to_png


@dataclass(frozen=True)
class Job:
    """One request, preprocessed, waiting for its forward pass."""

    seen: Preprocessed
    top_k: int = 3
    include_input: bool = False
    input_png: str | None = None  # the 28x28 input as a data URL, when asked and found


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


def input_png(seen: torch.Tensor | None) -> str | None:
    """The 28x28 image the model saw, as a PNG data URL; None when no digit was found."""
    if seen is None:
        return None
    return "data:image/png;base64," + base64.b64encode(to_png(seen)).decode("ascii")


def prepare(predictor: Predictor, data: bytes, top_k: int, include_input: bool, max_pixels: int) -> Job:
    """Decode and preprocess one upload (on a preprocessing thread); LenetError if it is no image."""
    seen = predictor.preprocess(open_image(data, "upload", max_pixels=max_pixels))
    return Job(seen, top_k, include_input, input_png(seen.image) if include_input else None)


def run_batch(predictor: Predictor, jobs: list[Job]) -> list[dict]:
    """One forward pass for a batch of prepared jobs (on the inference thread)."""
    top_k = max(job.top_k for job in jobs)  # then each answer is cut to its own k
    answers = predictor.answers([job.seen for job in jobs], top_k)
    results = []
    for job, answer in zip(jobs, answers, strict=True):
        result = {"path": "upload", **answer, "top_k": answer["top_k"][:job.top_k]}
        if job.include_input:
            result["input_png"] = job.input_png
        results.append(result)
    return results
