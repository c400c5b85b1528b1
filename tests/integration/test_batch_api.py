"""POST /public/traces/batch against the running service and the real broker."""

from __future__ import annotations

import json
import uuid

import aiohttp

from shared.contracts.envelope import decode_raw
from shared.devstack.pipeline import Service, Tenant, TopicTap


async def post_batch(service: Service, key: str, body: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            service.url + "/public/traces/batch",
            data=body,
            headers={"x-api-key": key, "Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.json()


async def test_each_item_gets_its_own_result(ingest: Service, tenant: Tenant, raw_tap: TopicTap) -> None:
    run = uuid.uuid4().hex[:8]
    items = [
        b'{"externalId": "' + run.encode() + b'-a", "spans": [{"span_id": "1", "name": "root"}]}',
        b'{"data": {"input": "x"}, "metadata": {"chatflowId": "cf"}}',
        b'{"nothing": true}',
        b'{"data": 1, "platformId": "' + str(tenant.http).encode() + b'"}',
        b'{"data": 1, "externalId": 42}',
        b'{"data": null}',
    ]
    status, answer = await post_batch(ingest, tenant.keys["two"], b'{"traces": [' + b",".join(items) + b"]}")
    assert status == 207, answer
    data = answer["data"]
    assert (data["accepted"], data["rejected"]) == (2, 4) and answer["success"] is False
    results = data["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == [
        "queued",
        "queued",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert results[0]["externalId"] == f"{run}-a"
    assert results[2]["error"]["code"] == "VALIDATION_ERROR"
    assert results[2]["error"]["details"][0]["path"] == "traces[2].spans"
    assert results[3]["error"]["code"] == "PLATFORM_NOT_ALLOWED"
    assert results[4]["error"]["details"][0]["path"] == "traces[4].externalId"
    assert results[5]["error"]["details"][0]["path"] == "traces[5].data"

    first = decode_raw((await raw_tap.wait_for(f"{tenant.project_id}:{run}-a".encode())).value)
    assert first.external_id == f"{run}-a" and bytes(first.body) == items[0]  # the item's own bytes
    second = decode_raw((await raw_tap.wait_for(f"{tenant.project_id}:{results[1]['id']}".encode())).value)
    assert bytes(second.body) == items[1] and second.hints.chatflow_id == "cf"
    assert second.key_restricted and set(second.key_scope) == {tenant.n8n, tenant.flowise}


async def test_whole_request_errors(ingest: Service, tenant: Tenant) -> None:
    key = tenant.keys["all"]
    for body, status, code in [
        (b"{oops", 400, "VALIDATION_ERROR"),
        (b'{"traces": []}', 400, "VALIDATION_ERROR"),
        (b'{"traces": {"a": 1}}', 400, "VALIDATION_ERROR"),
        (json.dumps({"traces": [{"data": i} for i in range(1001)]}).encode(), 400, "VALIDATION_ERROR"),
    ]:
        got, answer = await post_batch(ingest, key, body)
        assert (got, answer["error"]["code"]) == (status, code), answer
        assert answer["error"]["details"]
    got, answer = await post_batch(ingest, "mibo_" + "x" * 40, b'{"traces": [{"data": 1}]}')
    assert (got, answer["error"]["code"]) == (401, "INVALID_API_KEY")


async def test_all_valid_batch_is_a_success(ingest: Service, tenant: Tenant, raw_tap: TopicTap) -> None:
    body = json.dumps({"traces": [{"data": i, "externalId": f"bulk-{uuid.uuid4().hex}"} for i in range(100)]})
    status, answer = await post_batch(ingest, tenant.keys["all"], body.encode())
    assert status == 207 and answer["success"] is True and answer["data"]["accepted"] == 100
    keys = {f"{tenant.project_id}:{r['externalId']}".encode() for r in answer["data"]["results"]}
    assert await raw_tap.wait_for_keys(keys) == keys


async def test_get_on_the_batch_path_is_405(ingest: Service, tenant: Tenant) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            ingest.url + "/public/traces/batch", headers={"x-api-key": tenant.keys["all"]}
        ) as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
