"""The FastAPI app: the drawing page, the prediction API, health and model listing.

    GET  /                  the drawing page (static/, works offline)
    POST /api/predict       image bytes or multipart -> the predict object (?model= ?top_k=
                            ?include_input=true adds the 28x28 input as a PNG data URL)
    GET  /api/models        the loaded models (the first is the default)
    GET  /healthz           liveness
    GET  /docs              OpenAPI docs (FastAPI's)

Every client error is a 4xx with `{"error": "..."}`. Models are loaded once in
`create_app`; decoding, preprocessing and the forward pass run on worker threads (one per
usable core, at most MAX_WORKERS), batched under load (batcher.py), so the event loop only
does HTTP. The app's lifespan shuts the threads down when the server stops.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from lenet.errors import LenetError
from lenet.preprocess import MAX_PIXELS
from lenet.serve.batcher import Batcher
from lenet.serve.inference import Job, load_models, run_batch, warm_up
from lenet.serve.upload import ApiError, read_image_bytes

STATIC = Path(__file__).parent / "static"
# Requests in flight (from the first byte of the body read to the answer) beyond this get a
# 503 at once instead of a long wait. Each one may hold a whole body in memory, so this bounds
# the memory uploads can take: 64 x the 5 MB default limit is 320 MB at worst. 64 is still
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


class Prediction(BaseModel):
    """The predict object (DESIGN.md); `prediction` is null when no digit was found."""

    path: str
    model: str
    prediction: int | None
    name: str
    confidence: float | None
    probabilities: list[float] | None
    top_k: list[dict]
    reason: str | None = None
    inverted: bool | None = None
    input_png: str | None = None


class ErrorBody(BaseModel):
    error: str


IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_DOCS = {
    "requestBody": {"required": True, "content": {
        "image/png": IMAGE_BODY, "image/jpeg": IMAGE_BODY, "image/bmp": IMAGE_BODY,
        "image/webp": IMAGE_BODY, "application/octet-stream": IMAGE_BODY,
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": IMAGE_BODY}}},
    }},
}
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in [
    (400, "empty, non-image or undecodable body; image too many pixels"), (404, "unknown model"),
    (413, "body over the size limit"), (415, "wrong Content-Type"), (503, "too many requests waiting")]}


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

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


def describe(name: str, predictor) -> dict:
    """One entry of GET /api/models."""
    metrics = predictor.meta.get("metrics") or {}
    return {"name": name, "model": predictor.model_name, "dataset": predictor.dataset,
            "class_names": list(predictor.class_names), "test_accuracy": metrics.get("test_accuracy")}


async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def healthz(request: Request) -> dict:
    return {"status": "ok", "models": list(request.app.state.models)}


async def list_models(request: Request) -> dict:
    state = request.app.state
    return {"default": next(iter(state.models)), "max_body_bytes": state.max_body_bytes,
            "models": [describe(name, p) for name, p in state.models.items()]}


async def predict(request: Request,
                  model: str | None = Query(None, description="a name from GET /api/models; default: the first"),
                  top_k: int = Query(3, ge=1, le=100, description="how many best classes to list"),
                  include_input: bool = Query(False, description="add the 28x28 input as a PNG data URL"),
                  ) -> JSONResponse:
    """Recognise the digit (or garment) in an image: raw bytes or a multipart file part."""
    state = request.app.state
    name = model or next(iter(state.models))
    if name not in state.models:
        raise ApiError(404, f"unknown model {name!r}; loaded: {', '.join(state.models)}")
    if state.waiting >= state.max_waiting:
        raise ApiError(503, f"server busy: {state.waiting} requests waiting; retry shortly")
    state.waiting += 1  # before the body is read: a slow upload holds its buffer, so it counts
    try:
        data = await read_image_bytes(request, state.max_body_bytes)
        result = await state.batchers[name].submit(Job(data, top_k, include_input))
    except LenetError as exc:
        raise ApiError(400, str(exc)) from None
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
               max_pixels: int = MAX_PIXELS) -> FastAPI:
    """The app with every checkpoint loaded once (None = the embedded MNIST model).

    The first checkpoint is the default; a request picks another with `?model=NAME`.
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
                  version="1", lifespan=lifespan)
    app.state.models = models
    app.state.max_body_bytes = max_body_bytes
    app.state.workers = workers
    app.state.batchers = {name: Batcher(partial(run_batch, p, max_pixels=max_pixels), None, workers)
                          for name, p in models.items()}
    start_pool(app)  # also here, so the app works under a server that skips the lifespan
    app.state.waiting, app.state.max_waiting = 0, MAX_WAITING
    add_error_handlers(app)
    app.add_api_route("/", page, include_in_schema=False)
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="liveness")
    app.add_api_route("/api/models", list_models, methods=["GET"], summary="the loaded models")
    app.add_api_route("/api/predict", predict, methods=["POST"], summary="predict from an image",
                      response_model=Prediction, responses=ERRORS, openapi_extra=PREDICT_DOCS)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
