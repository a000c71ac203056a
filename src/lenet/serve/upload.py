"""The body of `POST /api/predict` -> the image's bytes, or an ApiError with a 4xx status.

Accepted: raw image bytes (`Content-Type: image/png|jpeg|bmp|gif|webp` or
`application/octet-stream`) or `multipart/form-data` with one file part. A GIF is read from
its first frame.

    curl -H 'Content-Type: image/png' --data-binary @digit.png localhost:8000/api/predict
    curl -F file=@digit.jpg localhost:8000/api/predict

The size limit is enforced while reading: a `Content-Length` over it is refused before a
byte is read, and a chunked body is abandoned as soon as it passes the limit. The bytes of
all bodies being received at once are bounded too (BodyBudget): a slow upload holds only
what it has sent, so slow uploads neither take the server's memory nor its queue slots.
"""

from __future__ import annotations

from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

RAW_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/gif",
             "image/webp", "application/octet-stream"}
MULTIPART = "multipart/form-data"
# Leading bytes of the formats we decode; anything else never reaches the image decoder.
SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "BMP": (b"BM",),
              "GIF": (b"GIF87a", b"GIF89a")}
FORMATS = "PNG, JPEG, BMP, GIF or WebP"  # for error messages


class ApiError(Exception):
    """A client error: answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def image_format(data: bytes) -> str | None:
    """'PNG', 'JPEG', 'BMP', 'GIF' or 'WEBP' from the first bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, prefixes in SIGNATURES.items():
        if data.startswith(prefixes):
            return name
    return None


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower case; '' when absent."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_length(request: Request, limit: int) -> None:
    """Refuse from the headers alone a body that says it is over the limit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise ApiError(400, f"bad Content-Length {declared!r}")
    if int(declared) > limit:
        raise ApiError(413, f"body of {int(declared):,} bytes is over the limit of {limit:,} bytes")


class BodyBudget:
    """The bytes of request bodies being received right now, all requests together.

    Past `limit`, an upload gets a 503 instead of more memory. Counting bytes rather than
    requests lets any number of slow uploads in (each holds only what it has sent; the
    server's deadlines close them, protocol.py) without letting uploads take unbounded memory.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise ApiError(503, f"server busy: {self.held:,} bytes of uploads are arriving; retry shortly")
        self.held += n

    def give_back(self, n: int) -> None:
        self.held -= n


class BodyReader:
    """One request's body: chunks under the size limit, held against the budget until `close`."""

    def __init__(self, request: Request, limit: int, budget: BodyBudget | None):
        self.request, self.limit = request, limit
        self.budget = budget or BodyBudget(limit)
        self.total = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks, stopping with a 413 as soon as more than `limit` bytes arrived."""
        try:
            async for chunk in self.request.stream():
                if self.total + len(chunk) > self.limit:
                    raise ApiError(413, f"body is over the limit of {self.limit:,} bytes")
                self.budget.take(len(chunk))
                self.total += len(chunk)
                yield chunk
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected before sending the whole body") from None

    def close(self) -> None:
        """The body is read (or abandoned): its bytes no longer count against the budget."""
        self.budget.give_back(self.total)
        self.total = 0


async def read_multipart_file(body: BodyReader, limit: int) -> bytes:
    """Bytes of the first file part of a multipart body (any field name)."""
    parser = MultiPartParser(body.request.headers, body.chunks(),
                             max_files=1, max_fields=16, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"bad multipart body: {exc.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise ApiError(400, "multipart body has no file part; send the image as e.g. -F file=@digit.png")
        return await files[0].read()
    finally:
        await form.close()


async def read_image_bytes(request: Request, limit: int, budget: BodyBudget | None = None) -> bytes:
    """The uploaded image's bytes, checked for type, size, emptiness and format."""
    kind = media_type(request)
    if kind != MULTIPART and kind not in RAW_TYPES:
        raise ApiError(415, f"Content-Type {kind or '(none)'!r} is not accepted: send image bytes with "
                       "Content-Type image/png, image/jpeg, image/bmp, image/gif or image/webp, or a "
                       "multipart/form-data upload")
    check_length(request, limit)
    body = BodyReader(request, limit, budget)
    try:
        if kind == MULTIPART:
            data = await read_multipart_file(body, limit)
        else:
            data = b"".join([chunk async for chunk in body.chunks()])
    finally:
        body.close()
    if not data:
        raise ApiError(400, f"empty body: send the bytes of a {FORMATS} image")
    if image_format(data) is None:
        raise ApiError(400, f"the body is not a {FORMATS} image")
    return data
