"""Request bodies on the wire: content types, encodings, size limits, bounded decompression,
bounded read time and a per-process budget of body bytes in flight.

Limits apply to what arrives and again to what it inflates to, and decompression stops as soon as
the output passes the limit, so a small gzip bomb costs at most ``limit`` bytes of memory. A
compressed body is exactly one gzip member or one zstd frame: anything after it is refused (400),
never silently dropped.

Reading a body has a deadline across all its chunks (``BODY_READ_TIMEOUT_SECONDS``, 408), so a
client that never finishes a body does not hold its connection and its memory forever. And every
body's bytes count against one budget per process (``MAX_INFLIGHT_BYTES``): reserved from
``Content-Length`` before reading when it is known, chunk by chunk otherwise, and for what a body
inflates to; released when the request is answered. A request that does not fit is answered 503
with ``Retry-After`` at once, instead of growing the process (a request always fits an empty budget,
so a budget below ``MAX_BODY_BYTES`` cannot refuse everything).
"""

from __future__ import annotations

import asyncio
import io
import zlib

import zstandard
from aiohttp import web

from ingest_api.context import SETTINGS
from ingest_api.responses import ApiError, Detail

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
JSON_TYPES = {"application/json", "text/json"}
PROTOBUF_TYPES = {"application/x-protobuf", "application/protobuf"}  # OTLP/HTTP's binary encoding
CHUNK = 64 * 1024
BUSY_RETRY_AFTER_SECONDS = 1


class InflightBudget:
    """Bytes of request bodies held by this process, against ``limit`` (one event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_reserve(self, size: int) -> bool:
        if self.used and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


_budgets: dict[int, InflightBudget] = {}


def inflight_budget(limit: int) -> InflightBudget:
    """The process's budget (one per configured limit; a process has one configuration)."""
    budget = _budgets.get(limit)
    if budget is None:
        budget = _budgets[limit] = InflightBudget(limit)
    return budget


class _Reservation:
    """What one request holds of the budget; all of it is given back when the request's handler
    task ends — after its answer was written, when its body is no longer referenced."""

    def __init__(self, budget: InflightBudget) -> None:
        self.budget = budget
        self.held = 0
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._release)

    def take(self, size: int) -> None:
        if not self.budget.try_reserve(size):
            raise busy()
        self.held += size

    def _release(self, _: object = None) -> None:
        self.budget.release(self.held)
        self.held = 0


_RESERVATION = web.RequestKey("body_reservation", _Reservation)


def _reservation(request: web.Request) -> _Reservation:
    found = request.get(_RESERVATION)
    if found is None:
        found = request[_RESERVATION] = _Reservation(
            inflight_budget(request.app[SETTINGS].max_inflight_bytes)
        )
    return found


def busy() -> ApiError:
    message = "The server is busy receiving other request bodies; retry shortly"
    return ApiError(
        503,
        "SERVICE_UNAVAILABLE",
        message,
        [Detail("busy", "Too many request bytes in flight on this server", "", "server")],
        headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
    )


def read_timeout(seconds: float) -> ApiError:
    message = f"The request body was not received within {seconds:g} s"
    return ApiError(408, "REQUEST_TIMEOUT", message, [Detail("timeout", message, "", "body")])


def too_large(limit: int, what: str = "Body") -> ApiError:
    return ApiError(
        413,
        "PAYLOAD_TOO_LARGE",
        f"{what} exceeds the limit of {limit} bytes",
        [Detail("too_large", f"{what} must be at most {limit} bytes", "", "body")],
    )


def unsupported(message: str, location: str = "header") -> ApiError:
    return ApiError(
        415, "UNSUPPORTED_MEDIA_TYPE", message, [Detail("media_type", message, "Content-Type", location)]
    )


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all (413), a body
    not received within ``BODY_READ_TIMEOUT_SECONDS`` (408), and a body the process's in-flight
    budget cannot hold (503)."""
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    settings = request.app[SETTINGS]
    reservation = _reservation(request)
    if length is not None:
        reservation.take(length)  # before reading anything: a refusal costs nothing
    content = request.content
    if content.is_eof():  # all of it has arrived already (most bodies): no deadline, no waiting
        whole = content.read_nowait()
        if len(whole) > limit:
            raise too_large(limit)
        if length is None or len(whole) > length:
            reservation.take(len(whole) - (length or 0))
        return whole
    # Chunks in a list, joined once: no buffer that grows by reallocation (which can hold the old
    # and the new copy at once), and a single-chunk body is returned without any copy.
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_read_timeout_seconds):
            while chunk := await content.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                if length is None or size > length:
                    reservation.take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise read_timeout(settings.body_read_timeout_seconds) from None
    return b"".join(chunks)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate in pieces of CHUNK bytes, so a refused bomb never holds more than ``limit``.

    Exactly one gzip member: a second member or any trailing bytes are refused, not dropped."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    pending = data
    try:
        while not inflater.eof:
            piece = inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail
            size += len(piece)
            if size > limit:
                raise too_large(limit, "Decompressed body")
            pieces.append(piece)
            if not piece and not pending:
                break  # input exhausted before the end of the stream
    except zlib.error as exc:
        raise _bad_encoding("gzip", exc) from None
    if not inflater.eof:
        raise _bad_encoding("gzip", "the stream is truncated")
    trailing = inflater.unused_data
    if trailing.startswith(GZIP_MAGIC):
        raise _bad_encoding(
            "gzip", "it holds more than one gzip member; send the body as a single gzip stream"
        )
    if trailing:
        raise _bad_encoding("gzip", f"{len(trailing)} bytes follow the end of the gzip stream")
    return b"".join(pieces)


def _zstd_frame_end(data: bytes) -> int | None:
    """Where the first zstd frame of ``data`` ends, found by walking its block headers (RFC 8878
    §3.1.1.2); None when the frame is truncated or its header unreadable."""
    try:
        checksum = 4 if zstandard.get_frame_parameters(data).has_checksum else 0
        pos = zstandard.frame_header_size(data)
    except zstandard.ZstdError:
        return None
    while pos + 3 <= len(data):
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores its one byte
        if last:
            return pos + checksum if pos + checksum <= len(data) else None
    return None


def _unzstd(data: bytes, limit: int) -> bytes:
    """Exactly one zstd frame, decompressed within ``limit``: more frames or trailing bytes are
    refused, not dropped."""
    end = _zstd_frame_end(data)
    if end is None:
        if data.startswith(ZSTD_MAGIC):
            raise _bad_encoding("zstd", "the frame is truncated")
        raise _bad_encoding("zstd", "it does not start with a zstd frame")
    if end < len(data):
        if data[end : end + 4] == ZSTD_MAGIC:
            raise _bad_encoding("zstd", "it holds more than one zstd frame; send the body as a single frame")
        raise _bad_encoding("zstd", f"{len(data) - end} bytes follow the end of the zstd frame")
    pieces: list[bytes] = []
    size = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            while piece := reader.read(CHUNK):
                size += len(piece)
                if size > limit:
                    raise too_large(limit, "Decompressed body")
                pieces.append(piece)
    except zstandard.ZstdError as exc:
        raise _bad_encoding("zstd", exc) from None
    return b"".join(pieces)


def _bad_encoding(name: str, exc: object) -> ApiError:
    message = f"Body is not valid {name}: {exc}"
    return ApiError(
        400, "VALIDATION_ERROR", message, [Detail("encoding", message, "Content-Encoding", "header")]
    )


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return content_type.split(";", 1)[0].strip().lower()


def is_protobuf(content_type: str) -> bool:
    return media_type(content_type) in PROTOBUF_TYPES


def decode_content(
    data: bytes, content_type: str, content_encoding: str, limit: int, *, protobuf: bool = False
) -> bytes:
    """Decompressed body bytes, or an ApiError (415 for types/encodings we do not take, 413, 400).

    JSON always; OTLP protobuf (``application/x-protobuf``) only where ``protobuf`` is set."""
    media = media_type(content_type)
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity") and media == "application/octet-stream" and data.startswith(GZIP_MAGIC):
        encoding = "gzip"  # n8n's node gzips large bodies and labels them octet-stream
    if (
        media not in JSON_TYPES
        and media != ""
        and not (media == "application/octet-stream" and encoding == "gzip")
        and not (protobuf and media in PROTOBUF_TYPES)
    ):
        also = ", application/x-protobuf (OTLP)" if protobuf else ""
        raise unsupported(
            f"Content-Type {media!r} is not accepted: send application/json{also} "
            "(or application/octet-stream with a gzip body)"
        )
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(data, limit)
    if encoding == "zstd":
        return _unzstd(data, limit)
    if encoding not in ("", "identity"):
        raise unsupported(f"Content-Encoding {encoding!r} is not accepted: use gzip or zstd", "header")
    return data


async def read_body(request: web.Request, limit: int, *, protobuf: bool = False) -> bytes:
    """The request body, read within ``limit`` and decompressed within ``limit``; what it inflated
    to counts against the in-flight budget too."""
    raw = await read_limited(request, limit)
    body = decode_content(
        raw,
        request.headers.get("Content-Type", ""),
        request.headers.get("Content-Encoding", ""),
        limit,
        protobuf=protobuf,
    )
    if body is not raw:
        del raw  # the compressed bytes are no longer needed
        _reservation(request).take(len(body))
    return body
