"""OTLP/HTTP traces in: ``POST /v1/traces``, and OTLP bodies on ``POST /public/traces``.

authenticate (``x-api-key``, like every public route) → read (JSON or protobuf, gzip/zstd, the
usual limits) → decode and split per trace (``ingest_api.otlp_decode``, pure) → admit each part (its
resource's ``mibo.platform_id`` must be within a restricted key's scope) → one envelope per part,
all produced together → answer once Kafka acknowledged every one.

Answers on ``/v1/traces`` follow the OTLP/HTTP specification, in the request's encoding
(protobuf or JSON): ``200`` with an ``ExportTraceServiceResponse``, carrying ``partial_success``
(``rejected_spans``, ``error_message``) when some spans were refused; otherwise a
``google.rpc.Status`` with ``400`` (undecodable body: not retryable), ``401`` (missing or invalid
key), ``413``/``415``, or ``503`` with ``Retry-After`` when Kafka did not acknowledge in time
(retryable: exporters retry with backoff). On ``/public/traces`` the same outcome is told in
Mibo's envelope (``202``, ``400``, ``403``, ``503``), so existing clients read ``data.id``.

Why a whole export is answered ``503`` when only some of its envelopes were not acknowledged:
the exporter then retries the whole request, and that is harmless — the storage worker merges
spans by id, and a re-sent span simply replaces its earlier, identical version.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

import msgspec
import structlog
from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ingest_api.auth import API_KEY_HEADER, allowed, authenticate, known_platform
from ingest_api.content import is_protobuf, read_body
from ingest_api.context import ENQUEUER, KEY_REGISTRY, METRICS, SETTINGS
from ingest_api.enqueue import unavailable
from ingest_api.envelopes import envelope_for
from ingest_api.otlp_decode import (
    PLATFORM_ATTRIBUTE,
    DecodedExport,
    OtlpInvalid,
    Part,
    RejectedSpans,
    SpanInvalid,
    decode_json,
    decode_protobuf,
    routing_of,
)
from ingest_api.responses import ERROR_CODE, ApiError, Detail, success
from shared.contracts import otlp
from shared.contracts.envelope import RawEnvelope, encode, message_key
from shared.contracts.times import iso_utc
from shared.registry import KeyInfo

log = structlog.get_logger(__name__)

Encoding = Literal["json", "protobuf"]
MAX_MESSAGE_REASONS = 5
_RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}
_CONTENT_TYPES: dict[Encoding, str] = {"json": "application/json", "protobuf": "application/x-protobuf"}


class Queued(msgspec.Struct, frozen=True):
    """A part that became an envelope and was acknowledged by Kafka."""

    part: Part
    envelope: RawEnvelope
    platform_id: uuid.UUID | None  # known at ingest (explicit, or a key restricted to one platform)


class Outcome(msgspec.Struct, frozen=True):
    queued: list[Queued]
    rejected: list[RejectedSpans]

    @property
    def rejected_spans(self) -> int:
        return sum(r.spans for r in self.rejected)

    @property
    def accepted_spans(self) -> int:
        return sum(len(q.part.spans) for q in self.queued)


# --------------------------------------------------------------------------------------------------
# Pure steps


def decode(body: bytes, encoding: Encoding) -> DecodedExport:
    try:
        return decode_protobuf(body) if encoding == "protobuf" else decode_json(body)
    except OtlpInvalid as exc:
        raise ApiError(
            400, "VALIDATION_ERROR", exc.message, [Detail("otlp_invalid", exc.message, "", "body")]
        ) from None


class Admitted(msgspec.Struct, frozen=True):
    """A part ready to produce: what it will be once queued, its message key and value."""

    queued: Queued
    key: bytes
    value: bytes


def _admit_part(
    key: KeyInfo, part: Part, received_at: dt.datetime, max_body_bytes: int
) -> Admitted | tuple[str, str]:
    """The part as an envelope, or why not: (rejection kind, reason)."""
    try:
        routing = routing_of(part.resource)
    except SpanInvalid as exc:
        return ("invalid", str(exc))
    if not allowed(key, routing.platform_id):
        return (
            "platform_not_allowed",
            f"this API key is restricted to specific platforms and platform {routing.platform_id} "
            f"(resource attribute {PLATFORM_ATTRIBUTE}) is not allowed",
        )
    body = otlp.encode_body(otlp.TracePart(part.trace_id, part.resource, part.spans))
    if len(body) > max_body_bytes:
        return ("too_large", f"a trace's spans from one resource exceed {max_body_bytes} bytes")
    external_id = otlp.external_id(part.trace_id)
    # The part's own UUIDv7 trace id is how re-deliveries of this export are recognised.
    envelope = envelope_for(
        key,
        body,
        shape=otlp.SHAPE,
        platform_id=routing.platform_id,
        hints=routing.hints,
        external_id=external_id,
        received_at=received_at,
    )
    queued = Queued(part, envelope, known_platform(key, routing.platform_id))
    return Admitted(queued, message_key(key.project_id, external_id, envelope.trace_id), encode(envelope))


def admit(
    key: KeyInfo, decoded: DecodedExport, received_at: dt.datetime, max_body_bytes: int
) -> tuple[list[Admitted], list[RejectedSpans]]:
    """Every part as an envelope, or rejected (counted by reason): an invalid
    ``mibo.platform_id``, a platform outside a restricted key's scope, or a part whose canonical
    body is larger than a trace body may be. The decoder's own rejections come first."""
    admitted: list[Admitted] = []
    refused: dict[tuple[str, str], int] = {}
    for part in decoded.parts:
        outcome = _admit_part(key, part, received_at, max_body_bytes)
        if isinstance(outcome, Admitted):
            admitted.append(outcome)
        else:
            refused[outcome] = refused.get(outcome, 0) + len(part.spans)
    rejected = decoded.rejected + [
        RejectedSpans(count, text, kind) for (kind, text), count in refused.items()
    ]
    return admitted, rejected


def error_message(rejected: list[RejectedSpans]) -> str:
    """OTLP's ``partial_success.error_message``: what was refused and why, briefly."""
    parts = [f"{r.spans} span(s) rejected: {r.reason}" for r in rejected[:MAX_MESSAGE_REASONS]]
    if len(rejected) > MAX_MESSAGE_REASONS:
        parts.append(f"and {len(rejected) - MAX_MESSAGE_REASONS} more reason(s)")
    return "; ".join(parts)


def export_response(outcome: Outcome, encoding: Encoding) -> web.Response:
    answer = ExportTraceServiceResponse()
    if outcome.rejected:
        answer.partial_success.rejected_spans = outcome.rejected_spans
        answer.partial_success.error_message = error_message(outcome.rejected)
    return _otlp_response(answer, 200, encoding)


def status_response(err: ApiError, encoding: Encoding) -> web.Response:
    """An error as OTLP/HTTP wants it: a ``google.rpc.Status`` in the request's encoding."""
    status = Status(code=_RPC_CODES.get(err.status, code_pb2.UNKNOWN), message=err.message)
    return _otlp_response(status, err.status, encoding, err.headers)


def _otlp_response(
    message: Any, status: int, encoding: Encoding, headers: dict[str, str] | None = None
) -> web.Response:
    if encoding == "protobuf":
        body = message.SerializeToString()
    else:
        body = json_format.MessageToJson(message, indent=None).encode()
    return web.Response(
        body=body, status=status, headers={**(headers or {}), "Content-Type": _CONTENT_TYPES[encoding]}
    )


# --------------------------------------------------------------------------------------------------
# The shell


async def enqueue(app: web.Application, key: KeyInfo, decoded: DecodedExport) -> Outcome:
    """Produce every admitted part and wait for all acknowledgements; 503 unless all were."""
    settings, metrics = app[SETTINGS], app[METRICS]
    admitted, rejected = admit(key, decoded, dt.datetime.now(dt.UTC), settings.max_body_bytes)
    failures = await app[ENQUEUER].send_many([(a.key, a.value) for a in admitted]) if admitted else []
    acked = [a for a, failure in zip(admitted, failures, strict=True) if failure is None]
    metrics.accepted.inc(len(acked))
    metrics.accepted_bytes.inc(sum(len(a.value) for a in acked))
    metrics.otlp_spans.labels("accepted").inc(sum(len(a.queued.part.spans) for a in acked))
    metrics.otlp_spans.labels("rejected").inc(sum(r.spans for r in rejected))
    if rejected:
        log.info(
            "otlp spans rejected",
            project_id=str(key.project_id),
            key_id=str(key.id),
            spans=sum(r.spans for r in rejected),
            reasons=[r.reason for r in rejected[:MAX_MESSAGE_REASONS]],
        )
    missing = [failure for failure in failures if failure]
    if missing:
        raise unavailable(f"{len(missing)} of {len(admitted)} trace(s) not acknowledged: {missing[0]}")
    return Outcome([a.queued for a in acked], rejected)


async def post_otlp_traces(request: web.Request) -> web.Response:
    """``POST /v1/traces``: OTLP/HTTP in, OTLP/HTTP out (including errors)."""
    app = request.app
    encoding: Encoding = "protobuf" if is_protobuf(request.headers.get("Content-Type", "")) else "json"
    try:
        key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
        body = await read_body(request, app[SETTINGS].max_body_bytes, protobuf=True)
        outcome = await enqueue(app, key, decode(body, encoding))
    except ApiError as err:
        request[ERROR_CODE] = err.code
        return status_response(err, encoding)
    return export_response(outcome, encoding)


ONLY_TRACES = (
    "This endpoint takes OpenTelemetry traces only: export traces to /v1/traces, and turn the "
    "other signals off (OTEL_METRICS_EXPORTER=none, OTEL_LOGS_EXPORTER=none)"
)


async def refuse_signal(request: web.Request) -> web.Response:
    """``POST /v1/metrics`` and ``/v1/logs``: a clear OTLP error (404, not retryable, so an
    exporter does not retry it forever) that says only traces are accepted."""
    encoding: Encoding = "protobuf" if is_protobuf(request.headers.get("Content-Type", "")) else "json"
    request[ERROR_CODE] = "NOT_FOUND"
    return status_response(ApiError(404, "NOT_FOUND", ONLY_TRACES), encoding)


async def accept_on_public(
    request: web.Request, key: KeyInfo, body: bytes, encoding: Encoding
) -> web.Response:
    """An OTLP body on ``POST /public/traces``, answered in Mibo's envelope.

    ``202`` when at least one trace was queued: ``data.id``/``externalId``/``platformId`` are the
    first trace's (what Mibo's clients read; the id is this export's part of the trace, which
    ``GET /public/traces/{id}`` resolves to the whole merged trace), ``data.traces`` lists every queued trace, and
    ``rejectedSpans``/``rejected`` say what was refused. Nothing queued: ``403`` when every refusal
    was a platform outside the key's scope, else ``400``."""
    decoded = decode(body, encoding)
    if not decoded.parts and not decoded.rejected:
        message = "The OTLP request holds no spans"
        raise ApiError(400, "VALIDATION_ERROR", message, [Detail("missing", message, "resourceSpans")])
    outcome = await enqueue(request.app, key, decoded)
    if not outcome.queued:
        kinds = {r.kind for r in outcome.rejected}
        details = [
            Detail(r.kind, f"{r.spans} span(s): {r.reason}", "resourceSpans") for r in outcome.rejected
        ]
        if kinds == {"platform_not_allowed"}:
            reason = outcome.rejected[0].reason
            raise ApiError(403, "PLATFORM_NOT_ALLOWED", reason[0].upper() + reason[1:], details)
        raise ApiError(400, "VALIDATION_ERROR", "No span of the OTLP request could be accepted", details)
    first = outcome.queued[0]
    traces = [
        {
            "id": str(q.envelope.trace_id),
            "externalId": q.envelope.external_id,
            "traceId": q.part.trace_id,
            "platformId": str(q.platform_id) if q.platform_id else None,
            "spans": len(q.part.spans),
        }
        for q in outcome.queued
    ]
    return success(
        {
            "id": str(first.envelope.trace_id),
            "externalId": first.envelope.external_id,
            "platformId": str(first.platform_id) if first.platform_id else None,
            "status": "queued",
            "createdAt": iso_utc(first.envelope.received_at),
            "traces": traces,
            "acceptedSpans": outcome.accepted_spans,
            "rejectedSpans": outcome.rejected_spans,
            "rejected": [{"spans": r.spans, "reason": r.reason} for r in outcome.rejected],
        },
        f"{len(traces)} OpenTelemetry trace(s) accepted",
        status=202,
    )
