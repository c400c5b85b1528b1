"""Trace body validation (SPEC §3): pure functions from bytes to a ``ParsedBody`` or details.

Two shapes share one endpoint:
- canonical ``{"spans": [...]}`` — every span checked (ids, names, timestamps, status);
- legacy ``{"data": <any JSON value but null>}`` — what the seed's curl sends.
A third is only recognised here: OTLP JSON (``{"resourceSpans": [...]}``, shape ``otlp``), which
``ingest_api.otlp_decode`` decodes and splits per trace.
The first two may carry ``metadata``, ``externalMetadata`` and ``platformId``; ``metadata.mibo.platform_id``
means the same as ``platformId`` and must agree with it. The body itself is forwarded unchanged;
this module only decides whether it is acceptable and extracts the routing inputs.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ingest_api.responses import Detail
from shared.contracts.envelope import BodyShape, Hints

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


class TraceBody(msgspec.Struct):
    spans: Annotated[list[Span], Meta(min_length=1)] | UnsetType = UNSET
    data: Any = UNSET  # UNSET when absent, None when an explicit null
    metadata: dict[str, Any] | None = None
    externalMetadata: dict[str, Any] | None = None  # wire names, camelCase
    platformId: str | None = None  # a string: validated below for a precise message
    resourceSpans: msgspec.Raw | UnsetType = (
        UNSET  # OTLP JSON: skipped here, decoded by ingest_api.otlp_decode
    )


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
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _path(raw: str) -> str:
    return raw.lstrip(".")


def _from_msgspec(exc: msgspec.MsgspecError) -> Detail:
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return Detail("json_invalid", f"Body is not valid JSON: {text}", "", "body")
    match = _AT.search(text)
    message, path = (text, "") if match is None else (text[: match.start()], _path(match["path"]))
    if message.startswith("Object missing required field"):
        kind = "missing"
    elif ", got `" in message:
        kind = "type_error"
    else:
        kind = "value_error"
    return Detail(kind, message, path, "body")


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


def parse_body(raw: bytes) -> ParsedBody:
    """Validate a decompressed request body; raises ``BodyInvalid`` with field-level details.

    Shape ``otlp`` means "an OTLP JSON request": only recognised, not validated; the caller decodes it."""
    try:
        body = _decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        detail = _from_msgspec(exc)
        raise BodyInvalid(
            "Body is not valid JSON" if detail.type == "json_invalid" else "Invalid body", [detail]
        ) from None
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
