"""Stored traces seen from outside: ``GET /public/traces/{id}`` on the running ingest service, and
the whole pipeline — the seed's curl through ``ingest_api`` → ``router_worker`` →
``storage_worker`` → a row with the right platform and key, versions by ``x-request-id``, and the
key's ``last_used_at``."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
from pathlib import Path

import aiohttp
import msgspec
import psycopg

from shared import registry
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, Tenant, make_tenant, start_worker
from shared.registry.validation import one
from shared.runtime.settings import Settings
from tests.storage_helpers import SEED_BODY, eventually, produce, routed_envelope

ROOT = Path(__file__).resolve().parents[2]


async def get_trace(ingest: Service, trace_id: str, key: str | None) -> tuple[int, dict]:
    headers = {"x-api-key": key} if key is not None else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ingest.url}/public/traces/{trace_id}", headers=headers) as resp:
            return resp.status, await resp.json()


async def wait_stored(ingest: Service, trace_id: str, key: str, timeout: float = 30.0) -> dict:
    answer: dict = {}

    async def found() -> bool:
        nonlocal answer
        status, answer = await get_trace(ingest, trace_id, key)
        return status == 200

    await eventually(found, timeout=timeout, what=f"trace {trace_id} readable")
    return answer


def assert_error(answer: tuple[int, dict], status: int, code: str) -> dict:
    got, body = answer
    assert got == status, body
    assert body["success"] is False and body["timestamp"]
    assert body["error"]["code"] == code and body["error"]["message"]
    assert all({"type", "msg", "path", "location"} <= set(d) for d in body["error"]["details"])
    return body["error"]


async def test_get_a_stored_trace(
    ingest: Service, storage: Service, settings: Settings, topics: Topics, tenant: Tenant
) -> None:
    raw_body = b'{"data": {"input": "q", "output": "a"}, "metadata": {"workflowId": "wf"}, "externalMetadata": {"run": 3}}'
    envelope = routed_envelope(
        tenant, raw_body=raw_body, external_id=f"get-{uuid.uuid4()}", key="n8n", platform=tenant.n8n
    )
    await produce(settings, topics.routed, [envelope])
    answer = await wait_stored(ingest, str(envelope.trace_id), tenant.keys["all"])

    assert answer["success"] is True and answer["message"] and answer["timestamp"]
    data = answer["data"]
    assert data["id"] == str(envelope.trace_id)
    assert data["platformId"] == str(tenant.n8n)
    assert data["externalId"] == envelope.external_id
    assert data["bodyShape"] == "data"
    assert data["payload"] == msgspec.json.decode(raw_body)
    assert data["metadata"] == {"workflowId": "wf"}
    assert data["externalMetadata"] == {"run": 3}
    received = dt.datetime.fromisoformat(data["receivedAt"])
    assert abs(received - envelope.received_at) < dt.timedelta(milliseconds=1)
    assert data["createdAt"].endswith("Z") and data["updatedAt"].endswith("Z")
    assert dt.datetime.fromisoformat(data["createdAt"]) >= received - dt.timedelta(milliseconds=1)

    # a key restricted to the trace's platform reads it too
    status, _ = await get_trace(ingest, str(envelope.trace_id), tenant.keys["n8n"])
    assert status == 200


async def test_get_is_scoped_to_the_key(
    ingest: Service, storage: Service, settings: Settings, topics: Topics, tenant: Tenant
) -> None:
    envelope = routed_envelope(tenant, platform=tenant.http)
    await produce(settings, topics.routed, [envelope])
    trace_id = str(envelope.trace_id)
    await wait_stored(ingest, trace_id, tenant.keys["all"])

    other = await make_tenant(settings)
    error = assert_error(await get_trace(ingest, trace_id, other.keys["all"]), 404, "NOT_FOUND")
    assert error["details"][0]["location"] == "path"
    # restricted to n8n and Flowise: the HTTP platform's trace is not theirs to read
    assert_error(await get_trace(ingest, trace_id, tenant.keys["two"]), 404, "NOT_FOUND")
    assert_error(await get_trace(ingest, str(uuid.uuid4()), tenant.keys["all"]), 404, "NOT_FOUND")


async def test_get_validates_the_key_and_the_id(ingest: Service, tenant: Tenant) -> None:
    error = assert_error(await get_trace(ingest, "not-a-uuid", tenant.keys["all"]), 400, "VALIDATION_ERROR")
    assert error["details"][0] == {
        "type": "uuid_parsing",
        "msg": "Input should be a valid UUID",
        "path": "id",
        "location": "path",
    }
    assert_error(await get_trace(ingest, str(uuid.uuid4()), None), 401, "MISSING_API_KEY")
    assert_error(await get_trace(ingest, "not-a-uuid", "mibo_" + "x" * 40), 401, "INVALID_API_KEY")


async def post(ingest: Service, key: str, body: bytes, external_id: str | None = None) -> str:
    headers = {"Content-Type": "application/json", "x-api-key": key}
    if external_id is not None:
        headers["x-request-id"] = external_id
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{ingest.url}/public/traces", data=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
            return answer["data"]["id"]


async def test_seed_curl_through_the_whole_pipeline(
    ingest: Service,
    storage: Service,
    settings: Settings,
    topics: Topics,
    tenant: Tenant,
    adb: psycopg.AsyncConnection,
    service_logs: Path,
) -> None:
    router = start_worker("router_worker", settings, service_logs)
    try:
        # A key restricted to one platform (the seed: "Mibo automatically routes traces to that platform").
        key = await registry.create_key(
            adb, settings.key_pepper, tenant.project_id, f"e2e-{uuid.uuid4().hex[:6]}", [tenant.n8n]
        )
        out = await asyncio.to_thread(
            subprocess.run,
            [
                "curl", "-sS", "-X", "POST", f"{ingest.url}/public/traces",
                "-H", "Content-Type: application/json", "-H", f"x-api-key: {key.key}",
                "-d", SEED_BODY.decode(),
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        trace_id = msgspec.json.decode(out.stdout)["data"]["id"]
        data = (await wait_stored(ingest, trace_id, key.key, timeout=60))["data"]
        assert data["platformId"] == str(tenant.n8n)
        assert data["payload"] == msgspec.json.decode(SEED_BODY)
        cur = await adb.execute("SELECT platform_id, api_key_id FROM traces WHERE id = %s", (trace_id,))
        assert await cur.fetchone() == (tenant.n8n, key.id)

        # The same x-request-id twice: one row, the newer payload.
        ext = f"e2e-{uuid.uuid4()}"
        first = await post(ingest, key.key, b'{"data": {"input": "first"}}', ext)
        await wait_stored(ingest, first, key.key, timeout=60)
        second = await post(ingest, key.key, b'{"data": {"input": "second"}}', ext)

        async def replaced() -> bool:
            cur = await adb.execute(
                "SELECT payload FROM traces WHERE project_id = %s AND external_id = %s",
                (tenant.project_id, ext),
            )
            rows = await cur.fetchall()
            assert len(rows) == 1
            return rows[0][0] == {"data": {"input": "second"}}

        await eventually(replaced, timeout=60, what="the second version to replace the first")
        status, answer = await get_trace(ingest, second, key.key)  # the id the last POST answered with
        assert status == 200 and answer["data"]["externalId"] == ext, answer
        assert answer["data"]["createdAt"] < answer["data"]["updatedAt"]
        status, answer = await get_trace(ingest, first, key.key)  # that version was replaced:
        assert status == 200 and answer["data"]["id"] == second  # its id leads to the newer one

        # The key's last_used_at follows within seconds: the newest trace's received-at.
        cur = await adb.execute(
            "SELECT received_at FROM traces WHERE project_id = %s AND external_id = %s",
            (tenant.project_id, ext),
        )
        newest = one(await cur.fetchone())[0]

        async def used() -> bool:
            cur = await adb.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (key.id,))
            return one(await cur.fetchone())[0] == newest

        await eventually(used, timeout=10, what="last_used_at to be set")
    finally:
        router.stop()
