"""OTLP decoding and admission as pure functions: requests made by the real OpenTelemetry SDK, in
protobuf and in OTLP JSON, become per-trace parts in canonical span fields; invalid spans are
counted, undecodable bodies refused; parts become envelopes (or partial-success rejections)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import msgspec
import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from ingest_api.body import parse_body
from ingest_api.endpoints.otlp import Outcome, admit, error_message, export_response
from ingest_api.otlp_decode import OtlpInvalid, SpanInvalid, decode_json, decode_protobuf, routing_of
from shared.contracts import otlp
from shared.contracts.envelope import Hints, decode_raw
from shared.registry import KeyInfo
from tests.otlp_helpers import hex_span_id, hex_trace_id, json_request, protobuf_request, record_spans

PLATFORM = uuid.UUID("0190a1b2-0000-7000-8000-000000000001")
RESOURCE = {"service.name": "checkout", "deployment.environment": "test"}


def checkout(tracer: trace.Tracer) -> None:
    """A small instrumented function: a server span with two children, an event and an error."""
    with tracer.start_as_current_span(
        "POST /orders", kind=SpanKind.SERVER, attributes={"http.status_code": 201, "tags": ["a", "b"]}
    ) as root:
        root.add_event("order.validated", {"items": 3})
        with tracer.start_as_current_span("charge card", attributes={"amount": 12.5, "ok": True}):
            pass
        with tracer.start_as_current_span("reserve stock") as stock:
            stock.set_status(Status(StatusCode.ERROR, "out of stock"))


def three_traces(tracer: trace.Tracer) -> None:
    for n in range(3):
        with tracer.start_as_current_span(f"job {n}"):
            with tracer.start_as_current_span(f"step {n}"):
                pass


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_sdk_spans_become_one_part_in_canonical_fields(encoding: str) -> None:
    spans = record_spans(RESOURCE, checkout)
    raw = protobuf_request(spans) if encoding == "protobuf" else json_request(spans)
    decoded = decode_protobuf(raw) if encoding == "protobuf" else decode_json(raw)

    assert decoded.rejected == [] and len(decoded.parts) == 1
    (part,) = decoded.parts
    assert part.trace_id == hex_trace_id(spans[0])
    assert part.resource["service.name"] == "checkout"
    assert part.resource["deployment.environment"] == "test"
    by_name = {s.name: s for s in part.spans}
    assert set(by_name) == {"POST /orders", "charge card", "reserve stock"}
    root = by_name["POST /orders"]
    sdk_root = next(s for s in spans if s.name == "POST /orders")
    assert root.span_id == hex_span_id(sdk_root) and root.parent_span_id is None
    assert root.kind == 2  # SERVER
    assert root.attributes == {"http.status_code": 201, "tags": ["a", "b"]}
    assert root.start_time_unix_nano == str(sdk_root.start_time)
    assert root.end_time_unix_nano == str(sdk_root.end_time)
    assert [(e.name, e.attributes) for e in root.events] == [("order.validated", {"items": 3})]
    assert root.scope == otlp.Scope("tests.shop", "1.0")
    assert by_name["charge card"].parent_span_id == root.span_id
    assert by_name["charge card"].attributes == {"amount": 12.5, "ok": True}
    assert by_name["charge card"].status is None  # unset
    assert by_name["reserve stock"].status == otlp.CanonicalStatus(2, "out of stock")


def test_json_and_protobuf_decode_to_the_same_parts() -> None:
    spans = record_spans(RESOURCE, three_traces)
    assert decode_json(json_request(spans)) == decode_protobuf(protobuf_request(spans))


def test_many_traces_in_one_request_become_one_part_each_in_order() -> None:
    spans = record_spans(RESOURCE, three_traces)
    decoded = decode_protobuf(protobuf_request(spans))
    order = list(dict.fromkeys(hex_trace_id(s) for s in spans))
    assert [p.trace_id for p in decoded.parts] == order
    assert [sorted(s.name for s in p.spans) for p in decoded.parts] == [
        ["job 0", "step 0"],
        ["job 1", "step 1"],
        ["job 2", "step 2"],
    ]


def test_one_trace_from_two_resources_is_two_parts() -> None:
    a = record_spans({"service.name": "a"}, lambda t: t.start_span("from a").end())
    request = ExportTraceServiceRequest.FromString(protobuf_request(a))
    second = request.resource_spans.add()
    second.CopyFrom(request.resource_spans[0])
    service = next(kv for kv in second.resource.attributes if kv.key == "service.name")
    service.value.string_value = "b"  # the same trace, another service
    second.scope_spans[0].spans[0].span_id = bytes.fromhex("00000000000000ff")
    decoded = decode_protobuf(request.SerializeToString())
    assert [p.trace_id for p in decoded.parts] == [hex_trace_id(a[0])] * 2
    assert [p.resource["service.name"] for p in decoded.parts] == ["a", "b"]


def test_otlp_json_details() -> None:
    """Hex ids in any case, numbers or strings for 64-bit values, enum names, unknown fields."""
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "lib"},
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "parentSpanId": "",
                                "name": "op",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": 1544712660000000000,
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "big", "value": {"intValue": "9007199254740993"}},
                                    {"key": "bytes", "value": {"bytesValue": "AQI="}},
                                    {"key": "nested", "value": {"kvlistValue": {"values": [
                                        {"key": "x", "value": {"arrayValue": {"values": [{"doubleValue": 1.5}, {}]}}}
                                    ]}}},
                                ],
                                "status": {"code": "STATUS_CODE_OK"},
                                "somethingNew": {"ignored": True},
                            }
                        ],
                    }
                ],
            }
        ]
    }  # fmt: skip
    (part,) = decode_json(json.dumps(body).encode()).parts
    (span,) = part.spans
    assert part.trace_id == "5b8efff798038103d269b633813fc60c"
    assert (span.span_id, span.parent_span_id, span.kind) == ("eee19b7ec3c1b174", None, 3)
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
        "1544712660000000000",
        "1544712661000000000",
    )
    assert span.attributes == {"big": 9007199254740993, "bytes": "AQI=", "nested": {"x": [1.5, None]}}
    assert span.status == otlp.CanonicalStatus(1) and span.scope == otlp.Scope("lib")


def test_invalid_spans_are_counted_and_the_rest_kept() -> None:
    good = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "ok"}
    spans = [
        good,
        {**good, "traceId": "abcd"},
        {**good, "traceId": "0" * 32},
        {**good, "spanId": "0" * 16},
        {**good, "spanId": "zz" * 8},
        {**good, "spanId": "1" * 16, "parentSpanId": "123"},
        {**good, "spanId": "2" * 16, "startTimeUnixNano": "-5"},
        {**good, "spanId": "3" * 16, "kind": "SPAN_KIND_WHATEVER"},
        {**good, "name": "ok again"},  # the same span id again: replaces the first
    ]
    body = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    decoded = decode_json(json.dumps(body).encode())
    assert [[s.name for s in p.spans] for p in decoded.parts] == [["ok again"]]
    assert decoded.rejected_spans == 7
    assert {r.reason.split(" ")[0] for r in decoded.rejected} >= {
        "trace",
        "span",
        "parent",
        "time",
        "unknown",
    }


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff", b"garbage that is not a protobuf message", b"\x0a\x05abc"],
)
def test_undecodable_protobuf_is_refused(raw: bytes) -> None:
    with pytest.raises(OtlpInvalid, match="not a protobuf ExportTraceServiceRequest"):
        decode_protobuf(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"resourceSpans": {"a": 1}}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [1]}]}]}',
    ],
)
def test_undecodable_json_is_refused(raw: bytes) -> None:
    with pytest.raises(OtlpInvalid, match="not an OTLP JSON"):
        decode_json(raw)


def test_empty_requests_decode_to_nothing() -> None:
    assert decode_json(b"{}").parts == [] and decode_protobuf(b"").parts == []


def test_public_traces_recognises_otlp_json() -> None:
    assert parse_body(b'{"resourceSpans": []}').shape == "otlp"
    with pytest.raises(Exception, match="exactly one of spans, data or resourceSpans"):
        parse_body(b'{"resourceSpans": [], "data": 1}')


def test_routing_inputs_come_from_the_resource() -> None:
    assert routing_of({"service.name": "checkout", "mibo.platform_id": str(PLATFORM)}).platform_id == PLATFORM
    assert routing_of({"service.name": "checkout"}).hints == Hints(service_name="checkout")
    assert routing_of({"service.name": 42}).hints == Hints()  # not a string: no hint
    assert routing_of({}).hints == Hints() and routing_of({}).platform_id is None
    for bad in ("not-a-uuid", 7):
        with pytest.raises(SpanInvalid, match=r"mibo\.platform_id"):
            routing_of({"mibo.platform_id": bad})


def key(restricted_to: set[uuid.UUID] | None = None) -> KeyInfo:
    return KeyInfo(uuid.uuid4(), uuid.uuid4(), restricted_to is not None, frozenset(restricted_to or ()))


def test_admit_builds_one_envelope_per_part_keyed_by_the_otlp_trace_id() -> None:
    spans = record_spans({**RESOURCE, "mibo.platform_id": str(PLATFORM)}, three_traces)
    decoded = decode_protobuf(protobuf_request(spans))
    k = key({PLATFORM})
    now = dt.datetime.now(dt.UTC)
    admitted, rejected = admit(k, decoded, now, 10_000_000)
    assert rejected == [] and len(admitted) == 3
    for item, part in zip(admitted, decoded.parts, strict=True):
        queued, envelope = item.queued, decode_raw(item.value)
        assert envelope == queued.envelope
        assert item.key == f"{k.project_id}:otlp:{part.trace_id}".encode()
        assert (envelope.shape, envelope.external_id) == ("otlp", f"otlp:{part.trace_id}")
        assert (envelope.platform_id, envelope.hints) == (PLATFORM, Hints(service_name="checkout"))
        assert (envelope.key_restricted, envelope.key_scope, envelope.received_at) == (True, [PLATFORM], now)
        assert queued.platform_id == PLATFORM
        body = msgspec.json.decode(bytes(envelope.body), type=otlp.TracePart)
        assert (body.traceId, body.resource, body.spans) == (part.trace_id, part.resource, part.spans)
    assert len({a.queued.envelope.trace_id for a in admitted}) == 3  # each part its own envelope id


def test_admit_rejects_out_of_scope_platforms_invalid_platform_ids_and_huge_parts() -> None:
    spans = record_spans({"service.name": "x", "mibo.platform_id": str(PLATFORM)}, three_traces)
    decoded = decode_protobuf(protobuf_request(spans))
    admitted, rejected = admit(key({uuid.uuid4()}), decoded, dt.datetime.now(dt.UTC), 10_000_000)
    assert admitted == [] and [(r.spans, r.kind) for r in rejected] == [(6, "platform_not_allowed")]
    assert "restricted" in rejected[0].reason and "not allowed" in rejected[0].reason
    assert len(admit(key(), decoded, dt.datetime.now(dt.UTC), 10_000_000)[0]) == 3  # unrestricted: fine

    bad = decode_protobuf(protobuf_request(record_spans({"mibo.platform_id": "nope"}, three_traces)))
    assert [(r.spans, r.kind) for r in admit(key(), bad, dt.datetime.now(dt.UTC), 10_000_000)[1]] == [
        (6, "invalid")
    ]
    assert [(r.spans, r.kind) for r in admit(key(), decoded, dt.datetime.now(dt.UTC), 100)[1]] == [
        (6, "too_large")
    ]


def test_partial_success_answer_in_both_encodings() -> None:
    from ingest_api.otlp_decode import RejectedSpans

    outcome = Outcome(
        [],
        [RejectedSpans(2, "platform X is not allowed", "platform_not_allowed"), RejectedSpans(1, "bad id")],
    )
    assert (
        error_message(outcome.rejected)
        == "2 span(s) rejected: platform X is not allowed; 1 span(s) rejected: bad id"
    )
    proto = export_response(outcome, "protobuf")
    assert (proto.status, proto.content_type) == (200, "application/x-protobuf")
    assert isinstance(proto.body, bytes)
    answer = ExportTraceServiceResponse.FromString(proto.body)
    assert answer.partial_success.rejected_spans == 3
    as_json = export_response(outcome, "json")
    assert as_json.content_type == "application/json"
    assert isinstance(as_json.body, bytes)
    decoded = json_format.Parse(as_json.body, ExportTraceServiceResponse())
    assert decoded == answer
    full = export_response(Outcome([], []), "json")
    assert full.body == b"{}"
