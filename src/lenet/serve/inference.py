"""The server's models: each Predictor loaded once, named, and run a batch at a time.

`load_models([None, "fashion-mnist", "runs/x/model.safetensors"])` gives
{"mnist": ..., "fashion-mnist": ..., "x": ...}. `run_batch` is what a worker thread runs
for a batch of queued requests: decode and preprocess each (most of the work), then one
forward pass for all of them (`Predictor.answers`), and the 28x28 input as a PNG if asked.
An `explain` job (`POST /api/explain`) is answered alone too: the predict object and what
each layer made of the image (serve/explaining.py).
A `number` job (`?number=true`) is split into its digits (lenet.numbers.read_number) and
answered on its own (`Predictor.number_answer`): the number object.
Whatever fails, fails one job only (a PredictionError with its HTTP status): an image that
cannot be processed is that request's 400, a model that fails or answers NaN its 503.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from lenet.errors import LenetError
from lenet.numbers import read_number
from lenet.predict import Predictor, png_data_url
from lenet.imagefile import open_image
from lenet.preprocess import Preprocessed
from lenet.serve.explaining import explain_answer, steps_json

log = logging.getLogger("lenet.serve")


class PredictionError(LenetError):
    """One job's failure and the HTTP status that answers it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Job:
    """One request's work: the uploaded bytes and what to send back."""

    data: bytes
    top_k: int = 3
    include_input: bool = False
    number: bool = False  # read a whole number: the number object instead of the predict object
    explain: bool = False  # POST /api/explain: the predict object + inside the network (serve/explaining.py)
    steps: bool = False  # explain: the preprocessing stages too

Digits = tuple[list[Preprocessed], str | None]  # read_number's answer: the digits, or why there are none


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
    explain_answer(predictor, predictor.preprocess(img))  # the model's copy for explaining, its kernels


def prepare(predictor: Predictor, job: Job, max_pixels: int) -> Preprocessed | Digits:
    """Decode and preprocess one upload (a number job: split into its digits). A failure other
    than a LenetError is a bug this image triggers (issue 11: NaN pixels in a float TIFF), so
    still the request's own 400; the model failing while it splits digits is a 503."""
    try:
        img = open_image(job.data, "upload", max_pixels=max_pixels)
        if job.number:
            return read_number(img, lambda items: model_scores(predictor, items))
        return predictor.preprocess(img)
    except LenetError:
        raise
    except Exception as exc:
        log.warning("an upload could not be processed", exc_info=True)  # for whoever fixes it
        raise PredictionError(f"upload: the image could not be processed ({type(exc).__name__}: {exc})") from None


def model_scores(predictor: Predictor, items: list[Preprocessed]) -> list[float]:
    """read_number's score (how surely each candidate is a digit); a failure is the model's: 503."""
    try:
        return predictor.digit_score(items)
    except Exception as exc:
        log.warning("the model failed on an upload", exc_info=True)
        raise PredictionError(f"upload: the model failed on this image ({type(exc).__name__}: {exc})", 503) from None


def number_result(predictor: Predictor, job: Job, found: Digits) -> dict | PredictionError:
    """One number job's digits -> the number object (+ each digit's 28x28 input if asked)."""
    digits, reason = found
    try:
        answer = predictor.number_answer(digits, reason)
    except Exception as exc:
        log.warning("the model failed on an upload", exc_info=True)
        return PredictionError(f"upload: the model failed on this image ({type(exc).__name__}: {exc})", 503)
    answer = finite(answer)
    if isinstance(answer, PredictionError):
        return answer
    if job.include_input:
        for digit, seen in zip(answer["digits"], digits, strict=True):
            digit["input_png"] = png_data_url(seen.image)
    return {"path": "upload", **answer}


def explain_result(predictor: Predictor, job: Job, seen: Preprocessed, max_pixels: int) -> dict | LenetError:
    """One explain job: the predict object with its 28x28 input, every layer's maps, the
    kernels and an attribution (+ the preprocessing stages if asked); answered alone."""
    answer = answer_each(predictor, [seen], job.top_k)[0]
    if isinstance(answer, PredictionError):
        return answer
    try:
        inside = finite(explain_answer(predictor, seen))
        if job.steps and not isinstance(inside, PredictionError):
            inside["steps"] = steps_json(job.data, predictor, max_pixels) if seen.image is not None else []
    except LenetError as exc:
        return exc
    except Exception as exc:
        log.warning("the model failed to explain an upload", exc_info=True)
        return PredictionError(f"upload: the model failed on this image ({type(exc).__name__}: {exc})", 503)
    if isinstance(inside, PredictionError):
        return inside
    return {"path": "upload", **answer, "input_png": png_data_url(seen.image), **inside}


def finite(answer: dict) -> dict | PredictionError:
    """The answer, or a 503 when it holds NaN or infinity (a corrupt checkpoint): not JSON."""
    try:
        json.dumps(answer, allow_nan=False)
    except (ValueError, TypeError):
        return PredictionError("upload: the model gave non-finite scores (NaN or infinity); "
                               "its checkpoint may be corrupt", 503)
    return answer


def answer_each(predictor: Predictor, items: list[Preprocessed], top_k: int) -> list[dict | PredictionError]:
    """One forward pass for all items; if it fails, one per item, so that only the item
    that fails gets the failure (a 503: the model, not the upload, failed)."""
    try:
        answers = predictor.answers(items, top_k)
    except Exception as exc:
        if len(items) > 1:
            return [answer_each(predictor, [item], top_k)[0] for item in items]
        log.warning("the model failed on an upload", exc_info=True)
        return [PredictionError(f"upload: the model failed on this image ({type(exc).__name__}: {exc})", 503)]
    return [finite(answer) for answer in answers]


def run_batch(predictor: Predictor, jobs: list[Job], max_pixels: int) -> list[dict | LenetError]:
    """Decode and preprocess every job's image, then one forward pass for all that decoded.

    Runs on a worker thread. A job whose bytes do not decode, or that fails in any way,
    gets its LenetError back; the others are unaffected. A number job is answered alone
    (its digits are split with the model's help), after its decoding.
    """
    results: list[dict | LenetError | None] = [None] * len(jobs)
    ready: list[tuple[int, Preprocessed]] = []
    for i, job in enumerate(jobs):
        if job.number and not predictor.digits:  # the app refuses these first; never guess digits here
            results[i] = PredictionError("number=true reads digits; this model's classes are not digits")
            continue
        try:
            found = prepare(predictor, job, max_pixels)
        except LenetError as exc:
            results[i] = exc
            continue
        if job.number:
            results[i] = number_result(predictor, job, found)
        elif job.explain:
            results[i] = explain_result(predictor, job, found, max_pixels)
        else:
            ready.append((i, found))
    if ready:
        top_k = max(jobs[i].top_k for i, _ in ready)  # then each answer is cut to its own k
        answers = answer_each(predictor, [seen for _, seen in ready], top_k)
        for (i, seen), answer in zip(ready, answers, strict=True):
            if isinstance(answer, PredictionError):
                results[i] = answer
                continue
            results[i] = {"path": "upload", **answer, "top_k": answer["top_k"][:jobs[i].top_k]}
            if jobs[i].include_input:
                results[i]["input_png"] = png_data_url(seen.image)
    return results
