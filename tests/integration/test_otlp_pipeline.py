"""OpenTelemetry through the whole pipeline: the real OpenTelemetry Python SDK and its OTLP/HTTP
exporter pointed at the running ingest service, the router and the storage worker as processes,
Kafka and PostgreSQL real. Spans of a small instrumented function end up stored under the platform
whose ``otlp_service_name`` is the resource's ``service.name``; OTLP JSON works on ``/v1/traces``
and ``/public/traces``; a trace sent in three exports is stored once with all its spans; a
restricted key gets ``partial_success`` for spans naming a platform outside its scope; errors
answer as OTLP/HTTP says (``google.rpc.Status``)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from google.rpc import code_pb2
from google.rpc.status_pb2 import Status
from multidict import CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import registry
from shared.contracts import otlp
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, free_port, metric_value, start_ingest
from shared.runtime.settings import Settings, libpq_url
from tests.otlp_helpers import hex_span_id, hex_trace_id, json_request, protobuf_request, record_spans
from tests.storage_helpers import eventually

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@dataclass
class Shop:
    project_id: uuid.UUID
    checkout: uuid.UUID  # http_api, otlp_service_name checkout-<suffix>
    billing: uuid.UUID  # custom, otlp_service_name billing-<suffix>
    checkout_service: str
    billing_service: str
    key: str  # unrestricted
    key_id: uuid.UUID
    checkout_key: str  # restricted to the checkout platform


@pytest.fixture(scope="module")
async def shop(settings: Settings, topics: Topics) -> Shop:
    suffix = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"otel-{suffix}")
        checkout = await registry.create_platform(
            conn, project.id, "checkout", "http_api", otlp_service_name=f"checkout-{suffix}"
        )
        billing = await registry.create_platform(
            conn, project.id, "billing", "custom", otlp_service_name=f"billing-{suffix}"
        )
        everything = await registry.create_key(conn, settings.key_pepper, project.id, "all")
        only_checkout = await registry.create_key(
            conn, settings.key_pepper, project.id, "checkout only", [checkout.id]
        )
    return Shop(
        project.id,
        checkout.id,
        billing.id,
        f"checkout-{suffix}",
        f"billing-{suffix}",
        everything.key,
        everything.id,
        only_checkout.key,
    )


@pytest.fixture(scope="module")
def pipeline(ingest: Service, router: Service, storage: Service) -> Service:
    """Ingest, router and storage worker all running; the ingest service to send to."""
    return ingest


class Recording(SpanExporter):
    """Wraps the real OTLP/HTTP exporter and keeps every export's result and spans."""

    def __init__(self, inner: OTLPSpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        result = self.inner.export(spans)
        self.results.append(result)
        self.spans.extend(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def exporter(ingest: Service, key: str) -> Recording:
    return Recording(OTLPSpanExporter(endpoint=f"{ingest.url}/v1/traces", headers={"x-api-key": key}))


def place_order(tracer: trace.Tracer, order_id: str) -> None:
    """The instrumented function: a root span and two children, one of them failing."""
    with tracer.start_as_current_span("place order", attributes={"order.id": order_id}) as root:
        root.add_event("validated", {"items": 2})
        with tracer.start_as_current_span("charge card", attributes={"amount": 42.5}):
            pass
        with tracer.start_as_current_span("send email") as email:
            email.set_status(trace.Status(trace.StatusCode.ERROR, "smtp down"))


async def get_trace(ingest: Service, trace_id: uuid.UUID | str, key: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ingest.url}/public/traces/{trace_id}", headers={"x-api-key": key}) as resp:
            return resp.status, await resp.json()


async def wait_trace(
    ingest: Service, shop: Shop, platform: uuid.UUID, trace_hex: str, spans: int, key: str | None = None
) -> dict[str, Any]:
    """The stored OTLP trace once it holds ``spans`` spans, as ``GET /public/traces/{id}`` shows it."""
    stored_id = otlp.stored_trace_id(shop.project_id, platform, f"otlp:{trace_hex}")
    data: dict[str, Any] = {}

    async def complete() -> bool:
        nonlocal data
        status, answer = await get_trace(ingest, stored_id, key or shop.key)
        data = answer.get("data") or {}
        return status == 200 and len(data["payload"]["spans"]) >= spans

    await eventually(complete, timeout=60, what=f"OTLP trace {trace_hex} with {spans} span(s)")
    return data


async def post(
    ingest: Service, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{ingest.url}{path}", data=body, headers=headers) as resp:
            return resp.status, await resp.read(), resp.headers


async def test_sdk_protobuf_exporter_spans_are_stored_under_the_platform_of_their_service(
    pipeline: Service, shop: Shop, adb: psycopg.AsyncConnection
) -> None:
    memory = InMemorySpanExporter()
    sender = exporter(pipeline, shop.key)
    provider = TracerProvider(resource=Resource.create({"service.name": shop.checkout_service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(sender))
    place_order(provider.get_tracer("shop.orders", "2.1"), "o-1")
    assert await asyncio.to_thread(provider.force_flush, 30_000)
    await asyncio.to_thread(provider.shutdown)
    assert sender.results and set(sender.results) == {SpanExportResult.SUCCESS}

    sdk = {s.name: s for s in memory.get_finished_spans()}
    trace_hex = hex_trace_id(sdk["place order"])
    data = await wait_trace(pipeline, shop, shop.checkout, trace_hex, 3)

    assert data["platformId"] == str(shop.checkout)  # service.name → otlp_service_name
    assert (data["bodyShape"], data["externalId"]) == ("otlp", f"otlp:{trace_hex}")
    assert data["id"] == str(otlp.stored_trace_id(shop.project_id, shop.checkout, f"otlp:{trace_hex}"))
    assert data["payload"]["traceId"] == trace_hex
    spans = {s["name"]: s for s in data["payload"]["spans"]}
    assert set(spans) == {"place order", "charge card", "send email"}
    root = spans["place order"]
    assert root["span_id"] == hex_span_id(sdk["place order"]) and root["parent_span_id"] is None
    assert root["attributes"] == {"order.id": "o-1"}
    assert root["events"][0]["name"] == "validated" and root["events"][0]["attributes"] == {"items": 2}
    assert root["start_time_unix_nano"] == str(sdk["place order"].start_time)
    assert root["scope"] == {"name": "shop.orders", "version": "2.1"}
    assert spans["charge card"]["parent_span_id"] == root["span_id"]
    assert spans["send email"]["status"] == {"code": 2, "message": "smtp down"}
    assert all(s["resource"]["service.name"] == shop.checkout_service for s in spans.values())
    assert data["metadata"]["service.name"] == shop.checkout_service

    cur = await adb.execute("SELECT platform_id, api_key_id FROM traces WHERE id = %s", (data["id"],))
    assert await cur.fetchone() == (shop.checkout, shop.key_id)


async def test_otlp_json_on_v1_traces_and_on_public_traces(pipeline: Service, shop: Shop) -> None:
    resource = {"service.name": shop.billing_service}
    first = record_spans(resource, lambda t: place_order(t, "o-2"))
    status, body, headers = await post(
        pipeline, "/v1/traces", json_request(first), {**JSON, "x-api-key": shop.key}
    )
    assert (status, body) == (200, b"{}") and headers["Content-Type"].startswith("application/json")

    second = record_spans(resource, lambda t: place_order(t, "o-3"))
    gzipped = gzip.compress(json_request(second))
    public_headers = {**JSON, "Content-Encoding": "gzip", "x-api-key": shop.key}
    status, body, _ = await post(pipeline, "/public/traces", gzipped, public_headers)
    answer = json.loads(body)
    assert status == 202, answer
    second_hex = hex_trace_id(second[0])
    data = answer["data"]
    assert data["id"] == data["traces"][0]["id"]  # this export's id: it leads to the merged trace
    assert (data["externalId"], data["status"], data["acceptedSpans"], data["rejectedSpans"]) == (
        f"otlp:{second_hex}",
        "queued",
        3,
        0,
    )
    assert [t["traceId"] for t in data["traces"]] == [second_hex]

    third = record_spans(resource, lambda t: place_order(t, "o-4"))  # protobuf on /public/traces too
    status, body, _ = await post(
        pipeline, "/public/traces", protobuf_request(third), {**PROTOBUF, "x-api-key": shop.key}
    )
    assert status == 202, body

    for spans in (first, second, third):
        data = await wait_trace(pipeline, shop, shop.billing, hex_trace_id(spans[0]), 3)
        assert data["platformId"] == str(shop.billing)
        assert {s["name"] for s in data["payload"]["spans"]} == {"place order", "charge card", "send email"}
    _, via_export = await get_trace(pipeline, answer["data"]["id"], shop.key)  # the 202's id
    assert via_export["data"]["payload"]["traceId"] == second_hex


async def test_a_trace_sent_in_three_exports_is_stored_once_with_all_its_spans(
    pipeline: Service, storage: Service, shop: Shop, adb: psycopg.AsyncConnection
) -> None:
    merged_before = metric_value(storage, "storage_otlp_parts_merged_total")
    sender = exporter(pipeline, shop.key)
    provider = TracerProvider(resource=Resource.create({"service.name": shop.checkout_service}))
    provider.add_span_processor(SimpleSpanProcessor(sender))  # one export per ended span
    await asyncio.to_thread(place_order, provider.get_tracer("shop"), "o-5")
    await asyncio.to_thread(provider.shutdown)
    assert len(sender.results) == 3 and set(sender.results) == {SpanExportResult.SUCCESS}

    trace_hex = hex_trace_id(sender.spans[0])
    data = await wait_trace(pipeline, shop, shop.checkout, trace_hex, 3)
    assert {s["name"] for s in data["payload"]["spans"]} == {"place order", "charge card", "send email"}
    cur = await adb.execute(
        "SELECT count(*) FROM traces WHERE project_id = %s AND external_id = %s",
        (shop.project_id, f"otlp:{trace_hex}"),
    )
    assert await cur.fetchone() == (1,)

    async def merged() -> bool:
        return metric_value(storage, "storage_otlp_parts_merged_total") >= merged_before + 2

    await eventually(merged, what="two parts counted as merged")

    # A span sent again replaces its earlier version; the trace keeps one row and three spans.
    request = ExportTraceServiceRequest.FromString(protobuf_request([sender.spans[0]]))
    request.resource_spans[0].scope_spans[0].spans[0].name = "charge card (retried)"
    status, _, _ = await post(
        pipeline, "/v1/traces", request.SerializeToString(), {**PROTOBUF, "x-api-key": shop.key}
    )
    assert status == 200

    async def replaced() -> bool:
        _, answer = await get_trace(pipeline, data["id"], shop.key)
        return "charge card (retried)" in {s["name"] for s in answer["data"]["payload"]["spans"]}

    await eventually(replaced, timeout=60, what="the re-sent span to replace its version")
    _, answer = await get_trace(pipeline, data["id"], shop.key)
    assert len(answer["data"]["payload"]["spans"]) == 3
    cur = await adb.execute("SELECT count(*) FROM trace_spans WHERE trace_id = %s", (data["id"],))
    assert await cur.fetchone() == (3,)


async def test_restricted_key_gets_partial_success_for_an_out_of_scope_platform(
    pipeline: Service, shop: Shop
) -> None:
    outside = record_spans(
        {"service.name": shop.billing_service, "mibo.platform_id": str(shop.billing)},
        lambda t: place_order(t, "o-6"),
    )
    inside = record_spans({"service.name": shop.checkout_service}, lambda t: t.start_span("ok").end())
    request = ExportTraceServiceRequest.FromString(protobuf_request(outside))
    request.resource_spans.extend(
        ExportTraceServiceRequest.FromString(protobuf_request(inside)).resource_spans
    )

    status, body, headers = await post(
        pipeline, "/v1/traces", request.SerializeToString(), {**PROTOBUF, "x-api-key": shop.checkout_key}
    )
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(body)
    assert answer.partial_success.rejected_spans == 3
    message = answer.partial_success.error_message
    assert "restricted" in message and "not allowed" in message and str(shop.billing) in message
    data = await wait_trace(pipeline, shop, shop.checkout, hex_trace_id(inside[0]), 1, key=shop.checkout_key)
    assert data["platformId"] == str(shop.checkout)

    # on /public/traces, nothing accepted: Mibo's 403
    status, body, _ = await post(
        pipeline, "/public/traces", json_request(outside), {**JSON, "x-api-key": shop.checkout_key}
    )
    answer_json = json.loads(body)
    assert status == 403 and answer_json["error"]["code"] == "PLATFORM_NOT_ALLOWED"
    assert "restricted" in answer_json["error"]["message"] and "allowed" in answer_json["error"]["message"]


async def test_otlp_errors_are_google_rpc_status_in_the_request_encoding(ingest: Service, shop: Shop) -> None:
    spans = record_spans({"service.name": "x"}, lambda t: t.start_span("s").end())

    status, body, _ = await post(ingest, "/v1/traces", protobuf_request(spans), PROTOBUF)
    assert status == 401 and Status.FromString(body).code == code_pb2.UNAUTHENTICATED
    status, body, _ = await post(
        ingest, "/v1/traces", json_request(spans), {**JSON, "x-api-key": "mibo_" + "x" * 40}
    )
    error = json.loads(body)
    assert status == 401 and error["code"] == code_pb2.UNAUTHENTICATED and error["message"]

    status, body, _ = await post(
        ingest, "/v1/traces", b"\xff\xff\xff garbage", {**PROTOBUF, "x-api-key": shop.key}
    )
    assert status == 400
    bad = Status.FromString(body)
    assert bad.code == code_pb2.INVALID_ARGUMENT and "protobuf" in bad.message
    status, body, _ = await post(
        ingest, "/v1/traces", b'{"resourceSpans": 5}', {**JSON, "x-api-key": shop.key}
    )
    assert status == 400 and json.loads(body)["code"] == code_pb2.INVALID_ARGUMENT
    status, _, _ = await post(
        ingest, "/v1/traces", b"hello", {"Content-Type": "text/plain", "x-api-key": shop.key}
    )
    assert status == 415
    # an empty export is fine: 200, nothing queued
    status, body, _ = await post(ingest, "/v1/traces", b"", {**PROTOBUF, "x-api-key": shop.key})
    assert (status, ExportTraceServiceResponse.FromString(body).HasField("partial_success")) == (200, False)


async def test_503_with_retry_after_when_kafka_cannot_take_the_export(
    settings: Settings, service_logs: Path, shop: Shop
) -> None:
    lonely = start_ingest(
        settings, service_logs, ready=False, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}"
    )
    try:
        spans = record_spans({"service.name": shop.checkout_service}, lambda t: t.start_span("s").end())

        async def registry_ready() -> bool:
            status, _, _ = await post(
                lonely, "/v1/traces", protobuf_request(spans), {**PROTOBUF, "x-api-key": shop.key}
            )
            return status != 401  # the key registry loads in the background

        await eventually(registry_ready, what="the key registry to load")
        status, body, headers = await post(
            lonely, "/v1/traces", protobuf_request(spans), {**PROTOBUF, "x-api-key": shop.key}
        )
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert Status.FromString(body).code == code_pb2.UNAVAILABLE
    finally:
        lonely.stop()


async def test_generic_endpoint_alias_and_only_traces_are_accepted(pipeline: Service, shop: Shop) -> None:
    """An SDK configured with the generic OTEL_EXPORTER_OTLP_ENDPOINT=$URL/public/traces appends
    /v1/traces; its metrics and logs exporters get a clear, non-retryable OTLP error."""
    generic = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"{pipeline.url}/public/traces"}
    saved = {name: os.environ.get(name) for name in generic}
    os.environ.update(generic)
    try:  # the endpoint from the environment, as SDKs read it
        sender = Recording(OTLPSpanExporter(headers={"x-api-key": shop.key}))
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    assert sender.inner._endpoint == f"{pipeline.url}/public/traces/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": shop.checkout_service}))
    provider.add_span_processor(SimpleSpanProcessor(sender))
    await asyncio.to_thread(place_order, provider.get_tracer("shop"), "o-generic")
    await asyncio.to_thread(provider.shutdown)
    assert set(sender.results) == {SpanExportResult.SUCCESS}
    await wait_trace(pipeline, shop, shop.checkout, hex_trace_id(sender.spans[0]), 3)

    for path in ("/v1/metrics", "/v1/logs", "/public/traces/v1/metrics", "/public/traces/v1/logs"):
        status, body, headers = await post(pipeline, path, b"", {**PROTOBUF, "x-api-key": shop.key})
        assert status == 404 and headers["Content-Type"] == "application/x-protobuf", path
        answer = Status.FromString(body)
        assert answer.code == code_pb2.NOT_FOUND and "traces only" in answer.message
        assert "OTEL_METRICS_EXPORTER=none" in answer.message
    status, body, _ = await post(pipeline, "/v1/logs", b"{}", {**JSON, "x-api-key": shop.key})
    assert status == 404 and "traces only" in json.loads(body)["message"]

    async with aiohttp.ClientSession() as session:  # the n8n node's credential test
        async with session.get(f"{pipeline.url}/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
