"""Trace body validation (SPEC §3): pure functions from bytes to a ``ParsedBody`` or details.

Two shapes share one endpoint:
- canonical ``{"spans": [...]}`` — every span checked (ids, names, timestamps, status);
- legacy ``{"data": <any JSON value but null>}`` — what the seed's curl sends.
A third is only recognised here: OTLP JSON (``{"resourceSpans": [...]}``, shape ``otlp``), which
``ingest_api.otlp_decode`` decodes and splits per trace.
The first two may carry ``metadata``, ``externalMetadata`` and ``platformId``; ``metadata.mibo.platform_id``
means the same as ``platformId`` and must agree with it. The body itself is forwarded unchanged;
this module only decides whether it is acceptable and extracts the routing inputs.

Every JSON body of every route (traces, batches, OTLP JSON, admin) first passes :func:`check_json`:
valid UTF-8 throughout (msgspec checks the strings it decodes, not those of fields it skips, so an
unknown field would otherwise carry invalid bytes to the storage worker), and nested at most
:data:`MAX_JSON_DEPTH` levels — a documented limit checked before decoding, so a deep body is a
clear 400, never a ``RecursionError`` inside the decoder.

The structs below are also the request schemas of ``/openapi.json`` (``ingest_api.openapi``):
what types cannot say (exactly one of ``spans``/``data``/``resourceSpans``, ``data`` not null,
platform ids are UUIDs, hints are strings or integers) is stated beside them with
``Meta(extra_json_schema=...)`` (:data:`TraceBodySchema` for the one-shape rule), next to the code
that enforces it.
"""

from __future__ import annotations

import codecs
import itertools
import re
import uuid
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ingest_api.responses import Detail, detail_from_msgspec
from shared.contracts.envelope import BodyShape, Hints

MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects a JSON body may have (``{}`` is 1, ``{"a": []}`` is 2)."""

NanoTime = Annotated[str, Meta(pattern=r"^[0-9]{1,20}$")] | Annotated[int, Meta(ge=0)]
NonEmpty = Annotated[str, Meta(min_length=1, max_length=1024)]


class SpanStatus(msgspec.Struct):
    code: Annotated[int, Meta(ge=0, le=2)]
    message: str | None = None


class Span(msgspec.Struct):
    span_id: NonEmpty
    name: NonEmpty
    parent_span_id: str | None = None
    attributes: dict[str, Any] | None = None
    start_time_unix_nano: NanoTime | None = None
    end_time_unix_nano: NanoTime | None = None
    status: SpanStatus | None = None
    events: list[Any] | None = None


_HINT_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}, {"type": "null"}]}
Metadata = Annotated[
    dict[str, Any],
    Meta(
        description="Routing hints: workflowId (n8n), chatflowId (Flowise), mibo.platform_id (a platform id)",
        extra_json_schema={
            "properties": {
                "workflowId": _HINT_SCHEMA,
                "chatflowId": _HINT_SCHEMA,
                "mibo": {
                    "properties": {
                        "platform_id": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]}
                    }
                },
            }
        },
    ),
]
OTLP_RESOURCE_SPANS_REF = "#/components/schemas/OtlpResourceSpans"


class TraceBody(msgspec.Struct):
    """One trace: canonical (``spans``), legacy (``data``: any JSON value but null) or an OTLP JSON
    request (``resourceSpans``); exactly one of the three. Other fields are allowed and travel with
    the body."""

    spans: Annotated[list[Span], Meta(min_length=1)] | UnsetType = UNSET
    # UNSET when absent, None when an explicit null (refused)
    data: Annotated[Any, Meta(extra_json_schema={"not": {"type": "null"}})] = UNSET
    metadata: Metadata | None = None
    externalMetadata: dict[str, Any] | None = None  # wire names, camelCase
    # a string: validated below for a precise message
    platformId: Annotated[str, Meta(extra_json_schema={"format": "uuid"})] | None = None
    # OTLP JSON: skipped here, decoded by ingest_api.otlp_decode (whose structs the schema refers to)
    resourceSpans: (
        Annotated[
            msgspec.Raw,
            Meta(
                extra_json_schema={
                    "anyOf": [
                        {"type": "array", "items": {"$ref": OTLP_RESOURCE_SPANS_REF}},
                        {"type": "null"},
                    ]
                }
            ),
        ]
        | UnsetType
    ) = UNSET


# What the types above cannot say (exactly one shape); enforced by parse_body, documented in
# /openapi.json on every use of the struct.
TraceBodySchema = Annotated[
    TraceBody,
    Meta(
        extra_json_schema={
            "oneOf": [{"required": ["spans"]}, {"required": ["data"]}, {"required": ["resourceSpans"]}]
        }
    ),
]


class ParsedBody(msgspec.Struct, frozen=True):
    shape: BodyShape
    platform_id: uuid.UUID | None
    hints: Hints


class BodyInvalid(Exception):
    def __init__(self, message: str, details: list[Detail]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


_decoder = msgspec.json.Decoder(TraceBody)
_Body = TypeVar("_Body", bound=TraceBody)
_UTF8_CHUNK = 64 * 1024
# The depth check keeps only brackets (as +1/-1 bytes) and quotes.
_OPEN, _CLOSE = b"\x01", b"\xff"
_SIGNED_BRACKETS = bytes.maketrans(b"[]{}", _OPEN + _CLOSE + _OPEN + _CLOSE)
_NOT_SHAPE = bytes(b for b in range(256) if b not in b'[]{}"')
_QUOTED = re.compile(rb'"[^"]*+"')


def utf8_error_offset(raw: bytes) -> int | None:
    """Offset of the first byte that is not valid UTF-8, or None. ASCII bodies (most) cost one
    ``isascii``; others are decoded in 64 KiB pieces, so checking never holds a copy of the body."""
    if raw.isascii():
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    for start in range(0, len(raw), _UTF8_CHUNK):
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(view[start : start + _UTF8_CHUNK], final=start + _UTF8_CHUNK >= len(raw))
        except UnicodeDecodeError as exc:
            return start - pending + exc.start
    return None


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Does the JSON text ``raw`` nest arrays and objects more than ``limit`` levels deep?

    Never recursive, and linear in C-speed passes (bytes methods), never a Python loop per byte:

    - at most ``limit`` opening brackets in all: it cannot be (most bodies stop here);
    - escaped backslashes and quotes are dropped, then everything but brackets and quotes, then
      every string (``""`` pairs first: strings without brackets, in one pass), so what is left
      is the structure, each bracket a +1 or -1 byte;
    - a run of ``limit + 1`` opening brackets: too deep;
    - innermost pairs are removed while that halves the structure (shallow bodies end here);
    - the rest: the running sum's maximum (``itertools.accumulate`` over signed bytes).

    Text that is not JSON answers False (or True when deep anyway): the decoder says what is wrong.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if b"\\" in raw:  # escaped backslashes, then escaped quotes: every quote left delimits a string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = raw.translate(_SIGNED_BRACKETS, _NOT_SHAPE)
    if b'"' in shape:
        shape = shape.replace(b'""', b"")  # drops bracket-free strings (or joins two strings)
        if b'"' in shape:
            shape = _QUOTED.sub(b"", shape)
    if _OPEN * (limit + 1) in shape:
        return True
    levels = 0
    while shape:
        inner = shape.replace(_OPEN + _CLOSE, b"")
        if len(inner) == len(shape):
            return False  # unbalanced: not JSON
        levels += 1
        if levels > limit:
            return True
        halved = len(inner) * 2 <= len(shape)
        shape = inner
        if not halved:
            break
    if not shape:
        return False
    return levels + max(itertools.accumulate(memoryview(shape).cast("b"))) > limit


def too_deep(limit: int = MAX_JSON_DEPTH) -> BodyInvalid:
    message = f"JSON must not nest arrays and objects more than {limit} levels deep"
    return BodyInvalid("Body is nested too deeply", [Detail("too_deep", message, "", "body")])


def check_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> None:
    """What every JSON body must be before it is decoded: UTF-8, and at most ``max_depth`` deep."""
    offset = utf8_error_offset(raw)
    if offset is not None:
        message = f"Body is not valid UTF-8 (invalid byte at offset {offset})"
        raise BodyInvalid("Body is not valid UTF-8", [Detail("utf8_invalid", message, "", "body")])
    if json_depth_exceeds(raw, max_depth):
        raise too_deep(max_depth)


def _uuid(value: Any, path: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise BodyInvalid("Invalid platform id", [Detail("uuid_parsing", "Input should be a valid UUID", path)])


def _hint(metadata: dict[str, Any], name: str) -> str | None:
    value = metadata.get(name)
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    raise BodyInvalid(
        f"metadata.{name} must be a string",
        [Detail("string_type", "Input should be a non-empty string", f"metadata.{name}")],
    )


def _explicit_platform(body: TraceBody) -> uuid.UUID | None:
    top = _uuid(body.platformId, "platformId") if body.platformId is not None else None
    mibo = (body.metadata or {}).get("mibo")
    nested = None
    if isinstance(mibo, dict) and mibo.get("platform_id") is not None:
        nested = _uuid(mibo["platform_id"], "metadata.mibo.platform_id")
    if top is not None and nested is not None and top != nested:
        raise BodyInvalid(
            "platformId and metadata.mibo.platform_id disagree",
            [
                Detail(
                    "platform_conflict",
                    f"platformId {top} differs from metadata.mibo.platform_id {nested}",
                    "platformId",
                )
            ],
        )
    return top or nested


def _check_spans(spans: list[Span]) -> None:
    seen: set[str] = set()
    for index, span in enumerate(spans):
        if span.span_id in seen:
            raise BodyInvalid(
                "Duplicate span_id",
                [Detail("duplicate", f"span_id {span.span_id!r} appears twice", f"spans[{index}].span_id")],
            )
        seen.add(span.span_id)


def parse_body(raw: bytes, *, checked: bool = False) -> ParsedBody:
    """Validate a decompressed request body; raises ``BodyInvalid`` with field-level details.

    ``checked``: the caller already ran :func:`check_json` on bytes that contain ``raw`` (a batch
    checks its whole body once). Shape ``otlp`` means "an OTLP JSON request": only recognised, not
    validated; the caller decodes it."""
    return validate(decode_body(raw, _decoder, checked=checked))


def decode_body(raw: bytes, decoder: msgspec.json.Decoder[_Body], *, checked: bool = False) -> _Body:
    """``raw`` decoded as a ``TraceBody`` (or a struct that extends it: a batch item), or
    ``BodyInvalid``: invalid JSON or a field of the wrong type."""
    if not checked:
        check_json(raw)
    try:
        return decoder.decode(raw)
    except RecursionError:  # not reachable after check_json; a backstop, never a 500
        raise too_deep() from None
    except msgspec.MsgspecError as exc:
        detail = detail_from_msgspec(exc)
        raise BodyInvalid(
            "Body is not valid JSON" if detail.type == "json_invalid" else "Invalid body", [detail]
        ) from None


def validate(body: TraceBody) -> ParsedBody:
    """What the types cannot say (exactly one shape, no null ``data``, unique span ids, platform
    ids and hints) checked on a decoded body; its routing inputs."""
    has_spans, has_data = body.spans is not UNSET, body.data is not UNSET
    if body.resourceSpans is not UNSET:
        if has_spans or has_data:
            message = "Body needs exactly one of spans, data or resourceSpans"
            raise BodyInvalid(message, [Detail("conflict", message, "resourceSpans")])
        return ParsedBody("otlp", None, Hints())
    if has_spans == has_data:
        message = "Body needs exactly one of spans or data" if has_spans else "Body needs spans or data"
        raise BodyInvalid(message, [Detail("missing" if not has_spans else "conflict", message, "spans")])
    if has_data and body.data is None:
        raise BodyInvalid("data must not be null", [Detail("null", "data must not be null", "data")])
    if isinstance(body.spans, list):
        _check_spans(body.spans)
    metadata = body.metadata or {}
    hints = Hints(workflow_id=_hint(metadata, "workflowId"), chatflow_id=_hint(metadata, "chatflowId"))
    return ParsedBody("spans" if has_spans else "data", _explicit_platform(body), hints)
