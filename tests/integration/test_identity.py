"""A trace's identity includes its platform (issue 12 §1), through the real pipeline:
``ingest_api`` → Kafka → ``router_worker`` → ``storage_worker`` → PostgreSQL.

Two keys restricted to two platforms of one project reuse an ``x-request-id`` and an OTLP trace
id: each keeps its own trace, neither can read, replace or merge into the other's, and the id
every ``202`` answered leads to the sender's own trace."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shared import registry
from shared.contracts import otlp
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings, libpq_url
from tests.otlp_helpers import protobuf_request, record_spans
from tests.storage_helpers import eventually


@dataclass
class TwoPlatforms:
    project_id: uuid.UUID
    flow: uuid.UUID  # flowise "flow-a"
    n8n: uuid.UUID  # n8n "n8n-a"
    key_a: str  # restricted to flow-a
    key_b: str  # restricted to n8n-a


@pytest.fixture(scope="module")
async def two(settings: Settings, topics: Topics) -> TwoPlatforms:
    suffix = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"identity-{suffix}")
        flow = await registry.create_platform(conn, project.id, "flow-a", "flowise")
        n8n = await registry.create_platform(conn, project.id, "n8n-a", "n8n")
        a = await registry.create_key(conn, settings.key_pepper, project.id, "A", [flow.id])
        b = await registry.create_key(conn, settings.key_pepper, project.id, "B", [n8n.id])
    return TwoPlatforms(project.id, flow.id, n8n.id, a.key, b.key)


async def post(
    ingest: Service, key: str, body: bytes, *, request_id: str | None = None, protobuf: bool = False
) -> dict[str, Any]:
    headers = {"x-api-key": key, "Content-Type": "application/x-protobuf" if protobuf else "application/json"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{ingest.url}/public/traces", data=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
            return answer["data"]


async def get(ingest: Service, trace_id: str, key: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ingest.url}/public/traces/{trace_id}", headers={"x-api-key": key}) as resp:
            return resp.status, await resp.json()


async def readable(ingest: Service, trace_id: str, key: str, check: Any = None) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def ready() -> bool:
        nonlocal found
        status, answer = await get(ingest, trace_id, key)
        found = answer.get("data") or {}
        return status == 200 and (check is None or check(found))

    await eventually(ready, timeout=60, what=f"trace {trace_id} readable")
    return found


async def test_two_platforms_reusing_an_external_id_keep_two_traces(
    ingest: Service, router: Service, storage: Service, two: TwoPlatforms, adb: psycopg.AsyncConnection
) -> None:
    execution = f"exec-{uuid.uuid4().hex[:8]}"  # two n8n instances both number their executions
    a = await post(ingest, two.key_a, b'{"data": {"from": "A"}}', request_id=execution)
    b = await post(ingest, two.key_b, b'{"data": {"from": "B"}}', request_id=execution)
    assert (a["platformId"], b["platformId"]) == (str(two.flow), str(two.n8n))  # known at ingest

    mine_a = await readable(ingest, a["id"], two.key_a)
    mine_b = await readable(ingest, b["id"], two.key_b)
    assert (mine_a["platformId"], mine_a["payload"]) == (str(two.flow), {"data": {"from": "A"}})
    assert (mine_b["platformId"], mine_b["payload"]) == (str(two.n8n), {"data": {"from": "B"}})
    # No key reads a trace on a platform outside its scope, whichever id it presents.
    assert (await get(ingest, a["id"], two.key_b))[0] == 404
    assert (await get(ingest, b["id"], two.key_a))[0] == 404

    cur = await adb.execute(
        "SELECT platform_id, payload FROM traces WHERE project_id = %s AND external_id = %s ORDER BY payload::text",
        (two.project_id, execution),
    )
    assert await cur.fetchall() == [(two.flow, {"data": {"from": "A"}}), (two.n8n, {"data": {"from": "B"}})]

    # A newer version from A replaces only A's trace; A's first id leads to the newer version.
    a2 = await post(ingest, two.key_a, b'{"data": {"from": "A", "v": 2}}', request_id=execution)
    newer = await readable(ingest, a["id"], two.key_a, lambda d: d["id"] == a2["id"])
    assert newer["payload"] == {"data": {"from": "A", "v": 2}}
    assert (await readable(ingest, b["id"], two.key_b))["payload"] == {"data": {"from": "B"}}


def _same_trace_id(request: bytes, trace_id: bytes) -> bytes:
    message = ExportTraceServiceRequest.FromString(request)
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.trace_id = trace_id
                span.parent_span_id = b""
    return message.SerializeToString()


async def test_spans_under_another_platforms_key_never_merge_into_a_trace(
    ingest: Service, router: Service, storage: Service, two: TwoPlatforms, adb: psycopg.AsyncConnection
) -> None:
    mine = record_spans({"service.name": "shop"}, lambda t: t.start_span("A's span").end())
    trace_bytes = mine[0].context.trace_id.to_bytes(16, "big")
    trace_hex = trace_bytes.hex()
    theirs = record_spans({"service.name": "shop"}, lambda t: t.start_span("B's injected span").end())
    a = await post(ingest, two.key_a, protobuf_request(mine), protobuf=True)
    b = await post(ingest, two.key_b, _same_trace_id(protobuf_request(theirs), trace_bytes), protobuf=True)
    assert a["externalId"] == b["externalId"] == f"otlp:{trace_hex}" and a["id"] != b["id"]

    trace_a = await readable(ingest, a["id"], two.key_a)  # the 202's id: this export, its trace
    trace_b = await readable(ingest, b["id"], two.key_b)
    assert [s["name"] for s in trace_a["payload"]["spans"]] == ["A's span"]
    assert [s["name"] for s in trace_b["payload"]["spans"]] == ["B's injected span"]
    assert trace_a["id"] == str(otlp.stored_trace_id(two.project_id, two.flow, f"otlp:{trace_hex}"))
    assert trace_b["id"] == str(otlp.stored_trace_id(two.project_id, two.n8n, f"otlp:{trace_hex}"))
    assert (await get(ingest, a["id"], two.key_b))[0] == 404
    assert (await get(ingest, trace_a["id"], two.key_b))[0] == 404
    cur = await adb.execute(
        """SELECT t.platform_id, count(s.span_id) FROM traces t JOIN trace_spans s ON s.trace_id = t.id
           WHERE t.project_id = %s AND t.external_id = %s GROUP BY t.platform_id ORDER BY 1""",
        (two.project_id, f"otlp:{trace_hex}"),
    )
    assert sorted(await cur.fetchall()) == sorted([(two.flow, 1), (two.n8n, 1)])
