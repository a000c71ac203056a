"""The body of `POST /api/predict` -> the image's bytes, or an ApiError with a 4xx status.

Accepted: raw image bytes (`Content-Type: image/png|jpeg|bmp|webp` or
`application/octet-stream`) or `multipart/form-data` with one file part.

    curl -H 'Content-Type: image/png' --data-binary @digit.png localhost:8000/api/predict
    curl -F file=@digit.jpg localhost:8000/api/predict

The size limit is enforced while reading: a `Content-Length` over it is refused before a
byte is read, and a chunked body is abandoned as soon as it passes the limit.
"""

from __future__ import annotations

from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

RAW_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/webp",
             "application/octet-stream"}
MULTIPART = "multipart/form-data"
# Leading bytes of the formats we decode; anything else never reaches the image decoder.
SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "BMP": (b"BM",)}


class ApiError(Exception):
    """A client error: answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def image_format(data: bytes) -> str | None:
    """'PNG', 'JPEG', 'BMP' or 'WEBP' from the first bytes, else None."""
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


async def limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, stopping with a 413 as soon as more than `limit` bytes arrived."""
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, f"body is over the limit of {limit:,} bytes")
            yield chunk
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before sending the whole body") from None


async def read_multipart_file(request: Request, limit: int) -> bytes:
    """Bytes of the first file part of a multipart body (any field name)."""
    parser = MultiPartParser(request.headers, limited_stream(request, limit),
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


async def read_image_bytes(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes, checked for type, size, emptiness and format."""
    kind = media_type(request)
    if kind != MULTIPART and kind not in RAW_TYPES:
        raise ApiError(415, f"Content-Type {kind or '(none)'!r} is not accepted: send image bytes with "
                       "Content-Type image/png, image/jpeg, image/bmp or image/webp, or a "
                       "multipart/form-data upload")
    check_length(request, limit)
    if kind == MULTIPART:
        data = await read_multipart_file(request, limit)
    else:
        data = b"".join([chunk async for chunk in limited_stream(request, limit)])
    if not data:
        raise ApiError(400, "empty body: send the bytes of a PNG, JPEG, BMP or WebP image")
    if image_format(data) is None:
        raise ApiError(400, "the body is not a PNG, JPEG, BMP or WebP image")
    return data
