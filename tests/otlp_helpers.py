"""Helpers for the OTLP tests: spans made by the real OpenTelemetry SDK, their OTLP encodings
(protobuf as the SDK's exporter sends it, and OTLP JSON with hex ids), and routed OTLP envelopes
for the storage worker's tests."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.contracts import otlp
from shared.contracts.envelope import Hints, RawEnvelope, RoutedEnvelope, routed
from shared.contracts.ids import uuid7
from shared.devstack.pipeline import Tenant

_ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


def record_spans(
    resource: dict[str, Any], work: Callable[[trace.Tracer], None], scope: str = "tests.shop"
) -> list[ReadableSpan]:
    """Run ``work`` with a tracer of a fresh SDK provider; the finished spans, in end order."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    work(provider.get_tracer(scope, "1.0"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def protobuf_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The bytes the SDK's OTLP/HTTP protobuf exporter sends for ``spans``."""
    return encode_spans(spans).SerializePartialToString()


def _hex_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: base64.b64decode(v).hex() if k in _ID_FIELDS and isinstance(v, str) else _hex_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


def json_request(spans: Sequence[ReadableSpan] | ExportTraceServiceRequest) -> bytes:
    """OTLP JSON for ``spans``: proto3's JSON mapping with trace and span ids as hex, as OTLP wants."""
    request = spans if isinstance(spans, ExportTraceServiceRequest) else encode_spans(spans)
    return json.dumps(_hex_ids(json_format.MessageToDict(request))).encode()


def hex_trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hex_span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def canonical_span(
    span_id: str, name: str = "op", parent: str | None = None, **extra: Any
) -> otlp.CanonicalSpan:
    return otlp.CanonicalSpan(
        span_id=span_id,
        name=name,
        parent_span_id=parent,
        start_time_unix_nano=extra.pop("start", "1000"),
        end_time_unix_nano=extra.pop("end", "2000"),
        attributes=extra.pop("attributes", {}),
        status=None,
        events=[],
        **extra,
    )


def otlp_envelope(
    tenant: Tenant,
    trace_hex: str,
    spans: list[otlp.CanonicalSpan],
    *,
    received_at: dt.datetime,
    platform: uuid.UUID | None = None,
    resource: dict[str, Any] | None = None,
    part_id: uuid.UUID | None = None,
) -> RoutedEnvelope:
    """A routed envelope of one OTLP part, as the ingest API and router would write it."""
    body = otlp.encode_body(otlp.TracePart(trace_hex, resource or {"service.name": "shop"}, spans))
    raw = RawEnvelope(
        trace_id=part_id or uuid7(int(received_at.timestamp() * 1000)),
        received_at=received_at,
        project_id=tenant.project_id,
        key_id=tenant.key_ids["all"],
        key_restricted=False,
        key_scope=[],
        external_id=otlp.external_id(trace_hex),
        shape="otlp",
        platform_id=None,
        hints=Hints(service_name="shop"),
        body=msgspec.Raw(body),
    )
    return routed(raw, platform or tenant.http, "hint")
