"""OTLP/HTTP trace requests → per-trace parts in canonical span fields: pure functions, no I/O.

Two encodings of ``ExportTraceServiceRequest`` arrive (OTLP/HTTP, opentelemetry-proto 1.x):

- protobuf (``application/x-protobuf``), parsed with the ``opentelemetry-proto`` classes;
- JSON (``application/json``), OTLP's JSON mapping: lowerCamelCase keys, trace and span ids as
  hex strings (not proto3 JSON's base64 — so ``google.protobuf.json_format`` cannot parse it),
  64-bit integers and nanosecond times as decimal strings or numbers, enums as integers (names
  are taken too), unknown fields ignored. DecodedExport by msgspec into the ``Otlp*`` structs below (also
  ``/openapi.json``'s schema of an OTLP JSON request).

Both become the same plain structs (``shared.contracts.otlp.CanonicalSpan``), then :func:`group` splits them into
one :class:`Part` per (resource, trace id): spans of one trace sent by one resource, which is what
one envelope carries. Splitting per resource as well as per trace keeps each part's routing hints
(``service.name``, ``mibo.platform_id`` are resource attributes) unambiguous when a Collector
batches several services' spans of one distributed trace into one request.

What is refused, span by span (OTLP's partial success, counted in :class:`RejectedSpans`): a trace id
that is not 16 bytes or is all zeros, a span id that is not 8 bytes or is all zeros, a parent span
id that is neither empty nor 8 bytes, a time that is not a Unix-nanosecond integer. A body that
cannot be decoded at all raises :class:`OtlpInvalid` (the whole request is a 400), and so does
one whose attribute values nest arrays or key/value lists more than :data:`MAX_VALUE_DEPTH` levels
deep, in either encoding (a JSON body is also held to ``ingest_api.body.MAX_JSON_DEPTH``, and
protobuf's parser stops at 100 nested messages). Within one part
a span id sent twice keeps its last version (a re-sent span replaces the earlier one). An empty
span name is kept as it is (OTLP allows it), and links are kept as sent.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ingest_api.body import BodyInvalid, check_json
from shared.contracts.envelope import Hints
from shared.contracts.otlp import CanonicalSpan, CanonicalStatus, Scope, SpanEvent, SpanLink

PLATFORM_ATTRIBUTE = "mibo.platform_id"
SERVICE_ATTRIBUTE = "service.name"
MAX_HINT_LENGTH = 200  # like a platform's otlp_service_name (shared.registry)
MAX_VALUE_DEPTH = 24
"""Most levels of arrayValue/kvlistValue an attribute value may nest (a scalar is level 0). Both
encodings can carry it anywhere attributes are (resource, span, event, link): within
``MAX_JSON_DEPTH`` in OTLP JSON, and within protobuf's 100 nested messages."""

_HEX_TRACE = re.compile(r"^[0-9a-f]{32}$")
_HEX_SPAN = re.compile(r"^[0-9a-f]{16}$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_NANOS = re.compile(r"^[0-9]{1,20}$")
_MAX_U64 = 2**64 - 1

SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


class OtlpInvalid(Exception):
    """The body is not an ``ExportTraceServiceRequest`` in the announced encoding."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _too_deep() -> OtlpInvalid:
    return OtlpInvalid(
        f"Body is nested too deeply: attribute values may nest arrayValue/kvlistValue at most "
        f"{MAX_VALUE_DEPTH} levels deep"
    )


class SpanInvalid(Exception):
    """One span cannot be accepted; the rest of the request can."""


class Part(msgspec.Struct, frozen=True):
    """Spans of one trace from one resource: one envelope's worth."""

    trace_id: str  # 32 lowercase hex digits
    resource: dict[str, Any]
    spans: list[CanonicalSpan]


class RejectedSpans(msgspec.Struct, frozen=True):
    """``spans`` spans refused for ``reason`` (a sentence for OTLP's ``error_message``); ``kind``
    is ``invalid``, ``platform_not_allowed`` or ``too_large``."""

    spans: int
    reason: str
    kind: str = "invalid"


class DecodedExport(msgspec.Struct, frozen=True):
    parts: list[Part]
    rejected: list[RejectedSpans]

    @property
    def rejected_spans(self) -> int:
        return sum(r.spans for r in self.rejected)


class _Batch(msgspec.Struct, frozen=True):
    """One ``ResourceSpans`` after conversion: its resource and its spans with their trace ids
    (or why a span was refused)."""

    resource: dict[str, Any]
    spans: list[tuple[str, CanonicalSpan] | str]


# --------------------------------------------------------------------------------------------------
# Shared checks


def _trace_id(value: str) -> str:
    if not _HEX_TRACE.match(value) or value == _ZERO_TRACE:
        raise SpanInvalid("trace id must be 16 bytes (32 hex digits), not all zeros")
    return value


def _span_id(value: str) -> str:
    if not _HEX_SPAN.match(value) or value == _ZERO_SPAN:
        raise SpanInvalid("span id must be 8 bytes (16 hex digits), not all zeros")
    return value


def _parent_id(value: str) -> str | None:
    if value in ("", _ZERO_SPAN):
        return None  # a root span
    if not _HEX_SPAN.match(value):
        raise SpanInvalid("parent span id must be empty or 8 bytes (16 hex digits)")
    return value


def _nanos(value: int | str | None) -> str | None:
    """Unix nanoseconds as a decimal string (Mibo's form); 0 or absent is unset."""
    if value is None:
        return None
    if type(value) is int and 0 <= value <= _MAX_U64:  # protobuf's fixed64 (and most JSON numbers)
        return str(value) if value else None
    text = str(value)
    if not _NANOS.match(text) or int(text) > _MAX_U64:
        raise SpanInvalid(f"time {text[:40]!r} is not an unsigned 64-bit integer of nanoseconds")
    return None if int(text) == 0 else str(int(text))


def _status(code: int, message: str | None) -> CanonicalStatus | None:
    if code == 0 and not message:
        return None
    return CanonicalStatus(code, message or None)


# --------------------------------------------------------------------------------------------------
# Protobuf


def _pb_value(value: AnyValue, depth: int = 0) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":  # most attributes
        return value.string_value
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value") and depth >= MAX_VALUE_DEPTH:
        raise _too_deep()
    if kind == "array_value":
        return [_pb_value(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values, depth + 1)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _pb_attributes(pairs: Iterable[KeyValue], depth: int = 0) -> dict[str, Any]:
    return {pair.key: _pb_value(pair.value, depth) for pair in pairs}


def _pb_span(span: Any, scope: Scope | None) -> tuple[str, CanonicalSpan]:
    trace_id = _trace_id(span.trace_id.hex())
    return trace_id, CanonicalSpan(
        span_id=_span_id(span.span_id.hex()),
        name=span.name,
        parent_span_id=_parent_id(span.parent_span_id.hex()),
        start_time_unix_nano=_nanos(span.start_time_unix_nano),
        end_time_unix_nano=_nanos(span.end_time_unix_nano),
        attributes=_pb_attributes(span.attributes),
        status=_status(span.status.code, span.status.message) if span.HasField("status") else None,
        events=[
            SpanEvent(e.name, _nanos(e.time_unix_nano), _pb_attributes(e.attributes)) for e in span.events
        ],
        kind=span.kind,
        links=[
            SpanLink(
                link.trace_id.hex(),
                link.span_id.hex(),
                link.trace_state or None,
                _pb_attributes(link.attributes),
            )
            for link in span.links
        ],
        trace_state=span.trace_state or None,
        scope=scope,
    )


def _pb_batches(request: ExportTraceServiceRequest) -> Iterator[_Batch]:
    for resource_spans in request.resource_spans:
        spans: list[tuple[str, CanonicalSpan] | str] = []
        for scope_spans in resource_spans.scope_spans:
            scope = None
            if scope_spans.HasField("scope") and scope_spans.scope.name:
                scope = Scope(scope_spans.scope.name, scope_spans.scope.version or None)
            for span in scope_spans.spans:
                try:
                    spans.append(_pb_span(span, scope))
                except SpanInvalid as exc:
                    spans.append(str(exc))
        yield _Batch(_pb_attributes(resource_spans.resource.attributes), spans)


def decode_protobuf(raw: bytes) -> DecodedExport:
    """``application/x-protobuf``: raises :class:`OtlpInvalid` when the bytes do not parse."""
    try:
        request = ExportTraceServiceRequest.FromString(raw)
    except DecodeError as exc:
        if "MaxDepth" in str(exc):  # upb's limit of nested messages
            raise _too_deep() from None
        raise OtlpInvalid(f"Body is not a protobuf ExportTraceServiceRequest: {exc}") from None
    return group(_pb_batches(request))


# --------------------------------------------------------------------------------------------------
# JSON (OTLP's JSON mapping). Every field may be absent or null, as in proto3 JSON.


class OtlpArrayValue(msgspec.Struct):
    values: list[OtlpAnyValue] | None = None


class OtlpKeyValueList(msgspec.Struct):
    values: list[OtlpKeyValue] | None = None


class OtlpAnyValue(msgspec.Struct):
    stringValue: str | None = None
    boolValue: bool | None = None
    intValue: int | str | None = None
    doubleValue: float | str | None = None  # "NaN", "Infinity" per proto3 JSON
    arrayValue: OtlpArrayValue | None = None
    kvlistValue: OtlpKeyValueList | None = None
    bytesValue: str | None = None


class OtlpKeyValue(msgspec.Struct):
    key: str
    value: OtlpAnyValue | None = None


class OtlpStatus(msgspec.Struct):
    code: int | str | None = None
    message: str | None = None


class OtlpEvent(msgspec.Struct):
    timeUnixNano: int | str | None = None
    name: str | None = None
    attributes: list[OtlpKeyValue] | None = None


class OtlpLink(msgspec.Struct):
    traceId: str | None = None
    spanId: str | None = None
    traceState: str | None = None
    attributes: list[OtlpKeyValue] | None = None


class OtlpSpan(msgspec.Struct):
    traceId: str | None = None
    spanId: str | None = None
    traceState: str | None = None
    parentSpanId: str | None = None
    name: str | None = None
    kind: int | str | None = None
    startTimeUnixNano: int | str | None = None
    endTimeUnixNano: int | str | None = None
    attributes: list[OtlpKeyValue] | None = None
    events: list[OtlpEvent] | None = None
    links: list[OtlpLink] | None = None
    status: OtlpStatus | None = None


class OtlpScope(msgspec.Struct):
    name: str | None = None
    version: str | None = None


class OtlpScopeSpans(msgspec.Struct):
    scope: OtlpScope | None = None
    spans: list[OtlpSpan] | None = None


class OtlpResource(msgspec.Struct):
    attributes: list[OtlpKeyValue] | None = None


class OtlpResourceSpans(msgspec.Struct):
    resource: OtlpResource | None = None
    scopeSpans: list[OtlpScopeSpans] | None = None


class OtlpRequest(msgspec.Struct):
    resourceSpans: list[OtlpResourceSpans] | None = None


_json_decoder = msgspec.json.Decoder(OtlpRequest)


def _j_value(value: OtlpAnyValue | None, depth: int = 0) -> Any:
    if value is None:
        return None
    if (value.arrayValue is not None or value.kvlistValue is not None) and depth >= MAX_VALUE_DEPTH:
        raise _too_deep()
    if value.stringValue is not None:
        return value.stringValue
    if value.boolValue is not None:
        return value.boolValue
    if value.intValue is not None:
        try:
            return int(value.intValue)
        except ValueError:
            raise SpanInvalid(f"intValue {str(value.intValue)[:40]!r} is not an integer") from None
    if value.doubleValue is not None:
        try:
            number = float(value.doubleValue)
        except ValueError:
            raise SpanInvalid(f"doubleValue {str(value.doubleValue)[:40]!r} is not a number") from None
        return number if number == number and abs(number) != float("inf") else str(value.doubleValue)
    if value.arrayValue is not None:
        return [_j_value(v, depth + 1) for v in value.arrayValue.values or ()]
    if value.kvlistValue is not None:
        return _j_attributes(value.kvlistValue.values, depth + 1)
    if value.bytesValue is not None:
        return value.bytesValue  # already base64, as OTLP JSON sends bytes
    return None


def _j_attributes(pairs: Sequence[OtlpKeyValue] | None, depth: int = 0) -> dict[str, Any]:
    return {pair.key: _j_value(pair.value, depth) for pair in pairs or ()}


def _j_enum(value: int | str | None, names: dict[str, int], what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if value in names:
        return names[value]
    raise SpanInvalid(f"unknown {what} {value[:40]!r}")


def _j_span(span: OtlpSpan, scope: Scope | None) -> tuple[str, CanonicalSpan]:
    trace_id = _trace_id((span.traceId or "").lower())
    status = span.status
    return trace_id, CanonicalSpan(
        span_id=_span_id((span.spanId or "").lower()),
        name=span.name or "",
        parent_span_id=_parent_id((span.parentSpanId or "").lower()),
        start_time_unix_nano=_nanos(span.startTimeUnixNano),
        end_time_unix_nano=_nanos(span.endTimeUnixNano),
        attributes=_j_attributes(span.attributes),
        status=None
        if status is None
        else _status(_j_enum(status.code, STATUS_CODES, "status code"), status.message),
        events=[
            SpanEvent(e.name or "", _nanos(e.timeUnixNano), _j_attributes(e.attributes))
            for e in span.events or ()
        ],
        kind=_j_enum(span.kind, SPAN_KINDS, "span kind"),
        links=[
            SpanLink(
                (link.traceId or "").lower(),
                (link.spanId or "").lower(),
                link.traceState or None,
                _j_attributes(link.attributes),
            )
            for link in span.links or ()
        ],
        trace_state=span.traceState or None,
        scope=scope,
    )


def _j_batches(request: OtlpRequest) -> Iterator[_Batch]:
    for resource_spans in request.resourceSpans or ():
        spans: list[tuple[str, CanonicalSpan] | str] = []
        resource = resource_spans.resource
        broken: str | None
        try:
            attributes = _j_attributes(resource.attributes if resource else None)
        except SpanInvalid as exc:
            attributes, broken = {}, f"resource: {exc}"
        else:
            broken = None
        for scope_spans in resource_spans.scopeSpans or ():
            scope = None
            if scope_spans.scope is not None and scope_spans.scope.name:
                scope = Scope(scope_spans.scope.name, scope_spans.scope.version or None)
            for span in scope_spans.spans or ():
                try:
                    spans.append(broken or _j_span(span, scope))
                except SpanInvalid as exc:
                    spans.append(str(exc))
        yield _Batch(attributes, spans)


def decode_json(raw: bytes) -> DecodedExport:
    """``application/json`` in OTLP's JSON mapping: raises :class:`OtlpInvalid` when it is not."""
    try:
        check_json(raw)
    except BodyInvalid as exc:
        raise OtlpInvalid(f"{exc.message}: {exc.details[0].msg}") from None
    try:
        request = _json_decoder.decode(raw)
    except RecursionError:  # not reachable after check_json; a backstop, never a 500
        raise OtlpInvalid("Body is nested too deeply") from None
    except msgspec.MsgspecError as exc:
        raise OtlpInvalid(f"Body is not an OTLP JSON ExportTraceServiceRequest: {exc}") from None
    return group(list(_j_batches(request)))


# --------------------------------------------------------------------------------------------------
# Grouping and routing inputs


def group(batches: Iterable[_Batch]) -> DecodedExport:
    """One :class:`Part` per (resource, trace id), in the order traces first appear; refused spans
    counted by reason."""
    parts: list[Part] = []
    refused: dict[str, int] = {}
    for batch in batches:
        traces: dict[str, dict[str, CanonicalSpan]] = {}
        for item in batch.spans:
            if isinstance(item, str):
                refused[item] = refused.get(item, 0) + 1
                continue
            trace_id, span = item
            traces.setdefault(trace_id, {})[span.span_id] = span  # a span sent twice: the last wins
        parts.extend(
            Part(trace_id, batch.resource, list(spans.values())) for trace_id, spans in traces.items()
        )
    return DecodedExport(parts, [RejectedSpans(count, reason) for reason, count in refused.items()])


class Routing(msgspec.Struct, frozen=True):
    """What a part's resource says about its platform."""

    platform_id: uuid.UUID | None
    hints: Hints


def routing_of(resource: dict[str, Any]) -> Routing:
    """``mibo.platform_id`` (an explicit platform: must be a UUID, else the part is refused with
    :class:`SpanInvalid`) and ``service.name`` (a hint; a value that is not a usable string is no
    hint at all, since every SDK sets it — often to ``unknown_service``)."""
    platform_id = None
    explicit = resource.get(PLATFORM_ATTRIBUTE)
    if explicit is not None:
        try:
            platform_id = uuid.UUID(explicit) if isinstance(explicit, str) else None
        except ValueError:
            platform_id = None
        if platform_id is None:
            raise SpanInvalid(f"resource attribute {PLATFORM_ATTRIBUTE} must be a platform id (a UUID)")
    service = resource.get(SERVICE_ATTRIBUTE)
    usable = isinstance(service, str) and 0 < len(service) <= MAX_HINT_LENGTH
    return Routing(platform_id, Hints(service_name=service if usable else None))
