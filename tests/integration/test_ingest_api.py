"""POST /public/traces against the running service (a real `python -m ingest_api` process),
the real broker and the real database. Every SPEC §3 error code is produced here."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import uuid

import aiohttp
import msgspec
import psycopg

from shared import registry
from shared.contracts.envelope import decode_raw
from shared.devstack.pipeline import Service, Tenant, TopicTap
from shared.runtime.settings import Settings, libpq_url

SEED_BODY = '{ "data": { "input": "...", "output": "..." } }'


async def post(
    service: Service,
    body: bytes | str,
    key: str | None,
    headers: dict[str, str] | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, dict, dict[str, str]]:
    sent = dict(headers or {})
    if key is not None:
        sent["x-api-key"] = key
    if content_type is not None:
        sent["Content-Type"] = content_type
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(
            service.url + "/public/traces",
            data=body if isinstance(body, bytes) else body.encode(),
            headers=sent,
        ) as resp:
            return resp.status, await resp.json(content_type=None), dict(resp.headers)


def assert_error(
    answer: tuple[int, dict, dict[str, str]], status: int, code: str, path: str | None = None
) -> dict:
    got_status, body, _ = answer
    assert got_status == status, body
    assert body["success"] is False and body["timestamp"]
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    details = body["error"]["details"]
    assert details and all({"type", "msg", "path", "location"} <= set(d) for d in details), details
    if path is not None:
        assert details[0]["path"] == path, details
    return body["error"]


async def test_seed_curl_is_queued_with_the_right_key_and_envelope(
    ingest: Service, tenant: Tenant, raw_tap: TopicTap
) -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        [
            "curl", "-sS", "-X", "POST", f"{ingest.url}/public/traces",
            "-H", "Content-Type: application/json",
            "-H", f"x-api-key: {tenant.keys['all']}",
            "-d", SEED_BODY, "-w", "\n%{http_code}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text, _, status = out.stdout.rpartition("\n")
    assert status == "202", text
    answer = json.loads(text)
    assert answer["success"] is True and answer["data"]["status"] == "queued"
    trace_id = uuid.UUID(answer["data"]["id"])
    assert trace_id.version == 7

    record = await raw_tap.wait_for(f"{tenant.project_id}:{trace_id}".encode())
    envelope = decode_raw(record.value)
    assert envelope.trace_id == trace_id
    assert envelope.project_id == tenant.project_id and envelope.key_id == tenant.key_ids["all"]
    assert envelope.key_restricted is False and envelope.key_scope == []
    assert envelope.shape == "data" and envelope.platform_id is None and envelope.external_id is None
    assert bytes(envelope.body) == SEED_BODY.encode()  # the body itself, unchanged
    assert tenant.keys["all"].encode() not in record.value  # the key never travels


async def test_external_id_keys_the_message_and_scope_travels(
    ingest: Service, tenant: Tenant, raw_tap: TopicTap
) -> None:
    body = {"spans": [{"span_id": "s1", "name": "root"}], "metadata": {"workflowId": tenant.workflow_id}}
    status, answer, _ = await post(ingest, json.dumps(body), tenant.keys["n8n"], {"x-request-id": "run-42"})
    assert status == 202, answer
    assert answer["data"]["externalId"] == "run-42"
    assert answer["data"]["platformId"] == str(tenant.n8n)  # a key restricted to one platform
    record = await raw_tap.wait_for(f"{tenant.project_id}:run-42".encode())
    envelope = decode_raw(record.value)
    assert envelope.external_id == "run-42" and envelope.shape == "spans"
    assert envelope.key_restricted and envelope.key_scope == [tenant.n8n]
    assert envelope.hints.workflow_id == tenant.workflow_id


async def test_explicit_platform_in_scope_is_accepted(
    ingest: Service, tenant: Tenant, raw_tap: TopicTap
) -> None:
    body = {"data": {"x": 1}, "metadata": {"mibo": {"platform_id": str(tenant.flowise)}}}
    status, answer, _ = await post(ingest, json.dumps(body), tenant.keys["two"])
    assert status == 202 and answer["data"]["platformId"] == str(tenant.flowise)
    envelope = decode_raw(
        (await raw_tap.wait_for(f"{tenant.project_id}:{answer['data']['id']}".encode())).value
    )
    assert envelope.platform_id == tenant.flowise


async def test_unknown_platform_for_an_unrestricted_key_is_left_to_the_router(
    ingest: Service, tenant: Tenant
) -> None:
    status, answer, _ = await post(
        ingest, json.dumps({"data": 1, "platformId": str(uuid.uuid4())}), tenant.keys["all"]
    )
    assert status == 202, answer


async def test_gzip_under_both_content_types(ingest: Service, tenant: Tenant, raw_tap: TopicTap) -> None:
    packed = gzip.compress(SEED_BODY.encode())
    for content_type in ("application/json", "application/octet-stream"):
        status, answer, _ = await post(
            ingest, packed, tenant.keys["all"], {"Content-Encoding": "gzip"}, content_type=content_type
        )
        assert status == 202, (content_type, answer)
        record = await raw_tap.wait_for(f"{tenant.project_id}:{answer['data']['id']}".encode())
        assert bytes(decode_raw(record.value).body) == SEED_BODY.encode()


def test_node_fetch_like_the_n8n_node(ingest: Service, tenant: Tenant) -> None:
    """Node's fetch, sending what n8n's node sends for large bodies: gzip as octet-stream."""
    script = """
const zlib = require('node:zlib');
const body = zlib.gzipSync(JSON.stringify({data: {input: 'x'.repeat(6 * 1024 * 1024), output: 'y'}}));
fetch(process.env.URL + '/public/traces', {method: 'POST', body,
  headers: {'Content-Type': 'application/octet-stream', 'x-api-key': process.env.KEY}})
  .then(async r => { console.log(r.status); console.log(JSON.stringify((await r.json()).data)); })
  .catch(e => { console.error(e); process.exit(1); });
"""
    out = subprocess.run(
        ["node", "-e", script],
        env={"URL": ingest.url, "KEY": tenant.keys["all"], "PATH": "/usr/bin:/usr/local/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status, data = out.stdout.strip().splitlines()
    assert status == "202" and uuid.UUID(json.loads(data)["id"])


async def test_missing_and_invalid_keys(ingest: Service, tenant: Tenant) -> None:
    assert_error(await post(ingest, SEED_BODY, None), 401, "MISSING_API_KEY", "x-api-key")
    unknown = "mibo_" + "A" * 40
    malformed = "not-a-key"
    bodies = [
        assert_error(await post(ingest, SEED_BODY, k), 401, "INVALID_API_KEY") for k in (unknown, malformed)
    ]
    assert bodies[0] == bodies[1]  # unknown and malformed look the same
    assert unknown not in json.dumps(bodies[0])


async def test_validation_errors_say_where(ingest: Service, tenant: Tenant) -> None:
    key = tenant.keys["all"]
    assert_error(await post(ingest, "{oops", key), 400, "VALIDATION_ERROR", "")
    assert_error(await post(ingest, '{"nothing": 1}', key), 400, "VALIDATION_ERROR", "spans")
    assert_error(
        await post(ingest, '{"spans": [{"name": "x"}]}', key), 400, "VALIDATION_ERROR", "spans[0].span_id"
    )
    assert_error(
        await post(ingest, '{"data": 1, "platformId": "p"}', key), 400, "VALIDATION_ERROR", "platformId"
    )
    conflicting = {
        "data": 1,
        "platformId": str(tenant.n8n),
        "metadata": {"mibo": {"platform_id": str(tenant.http)}},
    }
    err = assert_error(
        await post(ingest, json.dumps(conflicting), key), 400, "VALIDATION_ERROR", "platformId"
    )
    assert err["details"][0]["type"] == "platform_conflict"
    bad_id = assert_error(
        await post(ingest, SEED_BODY, key, {"x-request-id": "x" * 300}),
        400,
        "VALIDATION_ERROR",
        "x-request-id",
    )
    assert bad_id["details"][0]["location"] == "header"


async def test_out_of_scope_platform_is_403(ingest: Service, tenant: Tenant) -> None:
    body = json.dumps({"data": 1, "platformId": str(tenant.http)})
    err = assert_error(await post(ingest, body, tenant.keys["two"]), 403, "PLATFORM_NOT_ALLOWED")
    assert "restricted" in err["message"] and "not allowed" in err["message"]


async def test_unsupported_media_type(ingest: Service, tenant: Tenant) -> None:
    assert_error(
        await post(ingest, "data=1", tenant.keys["all"], content_type="application/x-www-form-urlencoded"),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )


async def test_too_large_bodies_do_not_grow_memory(ingest: Service, tenant: Tenant) -> None:
    limit = 10 * 1024 * 1024
    ingest.reset_peak()
    before = ingest.rss_kib()
    big = b'{"data": "' + b"x" * (12 * 1024 * 1024) + b'"}'
    assert_error(await post(ingest, big, tenant.keys["all"]), 413, "PAYLOAD_TOO_LARGE")

    async def chunked():  # no Content-Length: the server must stop reading at the limit itself
        for _ in range(12):
            yield b"x" * (1024 * 1024)

    async with aiohttp.ClientSession() as session:
        async with session.post(
            ingest.url + "/public/traces",
            data=chunked(),
            headers={"x-api-key": tenant.keys["all"], "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 413

    bomb = gzip.compress(b'{"data": "' + b"0" * (64 * 1024 * 1024) + b'"}', compresslevel=9)
    assert len(bomb) < 200_000
    assert_error(
        await post(ingest, bomb, tenant.keys["all"], {"Content-Encoding": "gzip"}), 413, "PAYLOAD_TOO_LARGE"
    )
    grown_kib = ingest.peak_rss_kib() - before
    # Refused bodies cost at most the limit (plus allocator slack), never what they claim.
    assert grown_kib * 1024 < limit + 2 * 1024 * 1024, f"peak RSS grew by {grown_kib} KiB"


async def test_revoked_key_is_refused_within_a_second(ingest: Service, settings: Settings) -> None:
    from shared.devstack.pipeline import make_tenant

    tenant = await make_tenant(settings)
    key = tenant.keys["all"]
    status, _, _ = await post(ingest, SEED_BODY, key)
    assert status == 202
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        await registry.revoke_key(conn, tenant.key_ids["all"])
    revoked_at = asyncio.get_running_loop().time()
    while True:
        status, _, _ = await post(ingest, SEED_BODY, key)
        elapsed = asyncio.get_running_loop().time() - revoked_at
        if status == 401:
            break
        assert elapsed < 1.0, "a revoked key still works after 1 s"
    assert elapsed < 1.0


async def test_new_key_works_at_once(ingest: Service, settings: Settings) -> None:
    from shared.devstack.pipeline import make_tenant

    tenant = await make_tenant(settings)
    status, answer, _ = await post(ingest, SEED_BODY, tenant.keys["two"])
    assert status == 202, answer


async def test_unknown_key_flood_does_not_query_the_database_per_request(ingest: Service) -> None:
    async def metric() -> float:
        async with aiohttp.ClientSession() as session:
            async with session.get(ingest.url + "/metrics") as resp:
                text = await resp.text()
        line = next(line for line in text.splitlines() if line.startswith("ingest_key_registry_db_lookups "))
        return float(line.split()[1])

    before = await metric()
    keys = ["mibo_" + uuid.uuid4().hex + uuid.uuid4().hex[:8] for _ in range(400)]
    async with aiohttp.ClientSession() as session:

        async def one(k: str) -> int:
            async with session.post(
                ingest.url + "/public/traces", data=SEED_BODY, headers={"x-api-key": k}
            ) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one(k) for k in keys))
    assert set(statuses) == {401}
    lookups = await metric() - before
    assert lookups <= 60, f"{lookups} database lookups for 400 unknown keys"


async def test_health_ready_metrics_openapi(ingest: Service) -> None:
    from openapi_spec_validator import validate

    async with aiohttp.ClientSession() as session:
        async with session.get(ingest.url + "/healthz") as resp:
            assert resp.status == 200
        async with session.get(ingest.url + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["checks"]["kafka"] is True
        async with session.get(ingest.url + "/metrics") as resp:
            text = await resp.text()
            for name in (
                "ingest_requests_total",
                "ingest_traces_accepted_total",
                "ingest_accepted_bytes_total",
                "ingest_produce_latency_seconds_bucket",
                "ingest_key_registry_size",
                "ingest_key_registry_refresh_age_seconds",
            ):
                assert name in text, name
            assert 'code="INVALID_API_KEY"' in text
        async with session.get(ingest.url + "/openapi.json") as resp:
            document = await resp.json()
    validate(document)
    assert {"/public/traces", "/admin/v1/projects", "/admin/v1/projects/{pid}/keys/{id}"} <= set(
        document["paths"]
    )


def test_envelope_is_msgspec_json(tenant: Tenant) -> None:
    # A consumer in any language reads the envelope as plain JSON.
    from shared.contracts.envelope import Hints, RawEnvelope, encode

    env = RawEnvelope(
        trace_id=uuid.uuid4(),
        received_at=__import__("datetime").datetime.now(__import__("datetime").UTC),
        project_id=tenant.project_id,
        key_id=uuid.uuid4(),
        key_restricted=False,
        key_scope=[],
        external_id=None,
        shape="data",
        platform_id=None,
        hints=Hints(),
        body=msgspec.Raw(b'{"data":1}'),
    )
    as_json = json.loads(encode(env))
    assert as_json["v"] == 1 and as_json["body"] == {"data": 1}
    assert decode_raw(encode(env)) == env
