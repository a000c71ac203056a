"""The FastAPI app: the drawing page, the prediction API, health and model listing.

    GET  /                  the drawing page (static/, works offline)
    POST /api/predict       image bytes or multipart -> the predict object (?model= ?top_k=
                            ?include_input=true adds the 28x28 input as a PNG data URL;
                            ?number=true reads a whole number: the number object)
    POST /api/explain       the same body -> the predict object + each layer's maps as PNG
                            sprites, the kernels, an attribution (?steps=true: preprocessing)
    GET  /api/models        the loaded models (the first is the default) and their preprocessing mode
    GET  /healthz           liveness
    GET  /docs              OpenAPI docs (Swagger UI from static/swagger/: works offline; docs.py)

Every client error is a 4xx with `{"error": "..."}`, and so is anything that goes wrong
inside a prediction (400 for the image, 503 for the model: never a 500). Requests whose
Host header is not a loopback name or a configured one get a 400 (hosts.py). Models are
loaded once in `create_app`; decoding, preprocessing and the forward pass run on worker
threads (one per usable core, at most MAX_WORKERS), batched under load (batcher.py), so the
event loop only does HTTP. The app's lifespan shuts the threads down when the server stops.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Iterable, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from lenet.errors import LenetError
from lenet.imagefile import MAX_PIXELS
from lenet.serve.batcher import Batcher
from lenet.serve.docs import add_docs
from lenet.serve.hosts import HostCheck
from lenet.serve.inference import Job, load_models, run_batch, warm_up
from lenet.serve.upload import ApiError, BodyBudget, read_image_bytes

STATIC = Path(__file__).parent / "static"
# Requests waiting for a prediction (body read, not yet answered) beyond this get a 503 at
# once instead of a long wait. Each holds its body, so this bounds their memory: 64 x the
# 5 MB default limit is 320 MB at worst. Bodies still arriving are bounded apart, by bytes
# (BodyBudget, the same 64 bodies' worth), so slow uploads take no slot here. 64 is still
# more than the workers can use: under load they take the whole queue as one batch.
MAX_WAITING = 64
MAX_WORKERS = 4  # worker threads; more only contend for the GIL (LeNet's ops are tiny)
# The page loads nothing from elsewhere; the policy makes a stray CDN link fail loudly.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


Status = Literal["ok", "unsure", "not_a_digit", "no_digit"]
STATUS_TEXT = ("ok: a confident answer; unsure: the two classes in `between` are close, or the top "
               "one is improbable; not_a_digit: ink, but none of the model's classes; no_digit: nothing found")
BOX_TEXT = "the ink's box [x0, y0, x1, y1] in the uploaded image's pixels (absent when nothing was found)"


class Prediction(BaseModel):
    """The predict object (as `lenet predict --json` prints it); `prediction` is null when no digit was found."""

    path: str
    model: str
    prediction: int | None
    name: str
    confidence: float | None
    probabilities: list[float] | None
    top_k: list[dict]
    status: Status = Field(description=STATUS_TEXT)
    between: list[int] | None = Field(None, description="unsure: the two class indices it hesitates between")
    box: list[int] | None = Field(None, description=BOX_TEXT)
    reason: str | None = None
    inverted: bool | None = None
    input_png: str | None = None


class Digit(BaseModel):
    """One digit of a number, left to right."""

    prediction: int | None
    confidence: float | None
    status: Status
    between: list[int] | None = None
    box: list[int] | None = Field(None, description=BOX_TEXT)
    input_png: str | None = Field(None, description="with include_input=true: this digit's 28x28 input")


class NumberPrediction(BaseModel):
    """The number object (`lenet predict --number --json`): ?number=true. `number` is null when no digit was found."""

    path: str
    model: str
    number: str | None = Field(description='the digits read left to right, e.g. "2026"')
    status: Status = Field(description="ok when every digit is ok; not_a_digit when none is a digit; "
                                       "else unsure; no_digit when nothing was found")
    digits: list[Digit]
    reason: str | None = None


class Layer(BaseModel):
    """One layer's output: its maps side by side in one PNG sprite, scaled 0..255 from min..max."""

    name: str = Field(description='"C1", "S2", ... for LeNet-5 models, else the module\'s name')
    title: str
    shape: list[int] = Field(description="[maps, height, width], or [units] for a vector layer")
    min: float
    max: float
    columns: int = Field(description="maps per sprite row (a vector layer: one row of N pixels)")
    sprite: str = Field(description="PNG data URL")
    map_min: list[float] | None = None
    map_max: list[float] | None = None
    values: list[float] | None = Field(None, description="a vector layer's units")
    kernels: dict | None = Field(None, description="a convolution's kernels: shape [out, in, k, k], bound, "
                                 "sprite (rows: output maps, columns: input maps; 128 = 0), inputs (C3's table)")


class Explanation(Prediction):
    """The predict object, with what each layer made of the image (`POST /api/explain`)."""

    layers: list[Layer]
    attribution: dict | None = Field(None, description="png: a 28x28 RGBA overlay (red: pushed towards the "
                                     "predicted class, blue: away), bound, target, method")
    steps: list[dict] | None = Field(None, description="with steps=true: the preprocessing stages {name, png}")


class ErrorBody(BaseModel):
    error: str


IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_DOCS = {
    "requestBody": {"required": True, "content": {
        "image/png": IMAGE_BODY, "image/jpeg": IMAGE_BODY, "image/bmp": IMAGE_BODY, "image/gif": IMAGE_BODY,
        "image/webp": IMAGE_BODY, "application/octet-stream": IMAGE_BODY,
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": IMAGE_BODY}}},
    }},
}
ANSWERS = {200: {"description": "the predict object; with number=true, the number object"}}
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in [
    (400, "empty, non-image, undecodable or unprocessable body; image too many pixels; Host not allowed; "
          "number=true with a model whose classes are not digits"),
    (404, "unknown model"), (413, "body over the size limit"), (415, "wrong Content-Type"),
    (503, "too many requests waiting or uploads arriving; the model failed or gave NaN")]}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_error_handlers(app: FastAPI) -> None:
    """Every error a client can cause becomes `{"error": message}` with its 4xx status."""

    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message)

    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(422, "; ".join(parts))

    async def bug(_: Request, exc: Exception) -> JSONResponse:  # still logged by the server
        return error_response(500, f"internal error ({type(exc).__name__}); please report it")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, bug)


def describe(name: str, predictor) -> dict:
    """One entry of GET /api/models; `mode` is its preprocessing (digits or objects), which the page reads."""
    metrics = predictor.meta.get("metrics") or {}
    return {"name": name, "model": predictor.model_name, "dataset": predictor.dataset,
            "class_names": list(predictor.class_names), "test_accuracy": metrics.get("test_accuracy"),
            "mode": predictor.mode.as_json()}


async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def healthz(request: Request) -> dict:
    return {"status": "ok", "models": list(request.app.state.models)}


async def list_models(request: Request) -> dict:
    state = request.app.state
    return {"default": next(iter(state.models)), "max_body_bytes": state.max_body_bytes,
            "models": [describe(name, p) for name, p in state.models.items()]}


def check_queue(state) -> None:
    if state.waiting >= state.max_waiting:
        raise ApiError(503, f"server busy: {state.waiting} requests waiting; retry shortly")


async def predict(request: Request,
                  model: str | None = Query(None, description="a name from GET /api/models; default: the first"),
                  top_k: int = Query(3, ge=1, le=100, description="how many best classes to list"),
                  include_input: bool = Query(False, description="add the 28x28 input as a PNG data URL "
                                              "(number=true: each digit's)"),
                  number: bool = Query(False, description="read a whole number, left to right: the number "
                                       "object (digit models only)"),
                  ) -> JSONResponse:
    """Recognise the digit (or garment) in an image: raw bytes or a multipart file part.

    Every answer has a `status` (ok, unsure with the two classes in `between`, not_a_digit,
    no_digit). With `number=true` the image is read as a handwritten number: each digit's
    answer and box, left to right."""
    state = request.app.state
    name = model_named(state, model)
    if number and not state.models[name].digits:
        raise ApiError(400, f"number=true reads digits; model {name!r} has other classes "
                            f"({', '.join(state.models[name].class_names[:3])}, ...)")
    return await answer(request, name, Job(b"", top_k, include_input, number))


async def explain(request: Request,
                  model: str | None = Query(None, description="a name from GET /api/models; default: the first"),
                  top_k: int = Query(3, ge=1, le=100, description="how many best classes to list"),
                  steps: bool = Query(False, description="add the preprocessing stages, each as a PNG data URL"),
                  ) -> JSONResponse:
    """Look inside the network: the predict object (with its 28x28 `input_png`), each layer's
    feature maps as one PNG sprite (the paper's names for LeNet-5: C1, S2, C3, S4, C5, F6,
    output), the convolutions' kernels, and an Integrated Gradients attribution as a 28x28
    RGBA overlay. Same body, limits and errors as /api/predict; `layers` is empty when no
    digit was found."""
    name = model_named(request.app.state, model)
    return await answer(request, name, Job(b"", top_k, True, explain=True, steps=steps))


def model_named(state, model: str | None) -> str:
    """The requested model's name (the first loaded by default), or a 404."""
    name = model or next(iter(state.models))
    if name not in state.models:
        raise ApiError(404, f"unknown model {name!r}; loaded: {', '.join(state.models)}")
    return name


async def answer(request: Request, name: str, job: Job) -> JSONResponse:
    """Read the body, queue `job` with it for model `name`'s worker threads, answer."""
    state = request.app.state
    check_queue(state)  # before the upload too: no use reading a body only to refuse it
    # A slot is taken once the body is in: a slow upload holds only its bytes (the budget).
    data = await read_image_bytes(request, state.max_body_bytes, state.uploads)
    check_queue(state)
    state.waiting += 1
    try:
        result = await state.batchers[name].submit(replace(job, data=data))
    except LenetError as exc:  # a PredictionError carries its status: 400 the image, 503 the model
        raise ApiError(getattr(exc, "status", 400), str(exc)) from None
    except Exception as exc:  # a bug in the batch machinery: still this request's JSON 503
        raise ApiError(503, f"prediction failed ({type(exc).__name__}); retry, or report it") from None
    finally:
        state.waiting -= 1
    return JSONResponse({**result, "model": name})


def worker_count() -> int:
    """The cores this process may run on (not all the machine's), at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))  # honours taskset / cgroup cpusets; Linux only
    except AttributeError:
        cores = os.cpu_count() or 2
    return max(1, min(cores, MAX_WORKERS))


def start_pool(app: FastAPI) -> None:
    """A fresh worker pool for every model's batcher (threads start on first use)."""
    pool = ThreadPoolExecutor(max_workers=app.state.workers, thread_name_prefix="lenet-worker")
    app.state.pool = pool
    for batcher in app.state.batchers.values():
        batcher.executor = pool


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Server start and stop: the worker threads end with the server."""
    if app.state.pool is None:  # stopped before and started again
        start_pool(app)
    try:
        yield
    finally:
        pool, app.state.pool = app.state.pool, None
        # Waits for batches already running (milliseconds); requests are done by now.
        pool.shutdown(wait=True)


def create_app(checkpoints: list[str | Path | None] | None = None, max_body_bytes: int = 5 * 2**20,
               max_pixels: int = MAX_PIXELS, allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The app with every checkpoint loaded once (None = the embedded MNIST model).

    The first checkpoint is the default; a request picks another with `?model=NAME`. It
    answers requests for loopback names and `allowed_hosts` only (`lenet serve --allow-host`).
    Raises LenetError for a checkpoint that does not load.
    """
    models = load_models(list(checkpoints or [None]))
    for predictor in models.values():
        warm_up(predictor)
    # A worker thread per usable core, shared by all models. Decoding and preprocessing are
    # most of the work and mostly release the GIL, so two threads on two cores serve ~1.3x
    # more than one (measured); batching makes the forward pass cheap under load.
    workers = worker_count()
    app = FastAPI(title="lenet", summary="LeNet-5 digit recognition: draw, upload, predict",
                  version="1", lifespan=lifespan, docs_url=None, redoc_url=None)  # docs.py: offline /docs
    app.state.models = models
    app.state.max_body_bytes = max_body_bytes
    app.state.workers = workers
    app.state.batchers = {name: Batcher(partial(run_batch, p, max_pixels=max_pixels), None, workers)
                          for name, p in models.items()}
    start_pool(app)  # also here, so the app works under a server that skips the lifespan
    app.state.waiting, app.state.max_waiting = 0, MAX_WAITING
    app.state.uploads = BodyBudget(MAX_WAITING * max_body_bytes)
    add_error_handlers(app)
    app.add_middleware(HostCheck, names=allowed_hosts)
    app.add_api_route("/", page, include_in_schema=False)
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="liveness")
    app.add_api_route("/api/models", list_models, methods=["GET"], summary="the loaded models")
    app.add_api_route("/api/predict", predict, methods=["POST"], summary="predict from an image",
                      response_model=Prediction | NumberPrediction, responses={**ANSWERS, **ERRORS},
                      openapi_extra=PREDICT_DOCS)
    app.add_api_route("/api/explain", explain, methods=["POST"], summary="look inside the network",
                      response_model=Explanation, responses={200: {"description": "the explain object"},
                                                             **ERRORS}, openapi_extra=PREDICT_DOCS)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
