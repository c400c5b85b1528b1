"""Receipts against the real pipeline (issue 14): ``GET /public/traces/{id}`` and ``mibo-ingest
trace`` say stored, dead-lettered (why, when) or unknown; the dead-letter index behind them is
filled from traces.dlq by the storage worker, idempotently, and resolved when a replay stores the
trace; ``dlq stats`` from the index counts what the topic holds; large answers are gzipped."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import psycopg
from aiokafka import TopicPartition

from shared import registry
from shared.contracts.dlq import read_headers
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, Tenant, TopicTap, make_tenant, service_env, start_ingest
from shared.runtime.kafka import Record, ensure_topics
from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import Batch
from storage_worker.database import Database
from storage_worker.dlq_index import IndexStep
from storage_worker.metrics import StorageMetrics
from tests.storage_helpers import eventually, produce, routed_envelope


async def send(ingest: Service, key: str, body: dict[str, Any], external_id: str | None = None) -> str:
    headers = {"x-api-key": key}
    if external_id is not None:
        headers["x-request-id"] = external_id
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{ingest.url}/public/traces", json=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
            return str(answer["data"]["id"])


async def receipt(ingest: Service, trace_id: str, key: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ingest.url}/public/traces/{trace_id}", headers={"x-api-key": key}) as resp:
            return resp.status, await resp.json()


async def wait_receipt(ingest: Service, trace_id: str, key: str, status: str, timeout: float = 30) -> dict:
    """The receipt's ``data`` once it says ``status``."""
    seen: dict[str, Any] = {}

    async def says() -> bool:
        nonlocal seen
        code, seen = await receipt(ingest, trace_id, key)
        return code == 200 and seen["data"]["status"] == status

    await eventually(says, timeout=timeout, what=f"receipt of {trace_id} to say {status} (last: {seen})")
    return seen["data"]


def assert_unknown(answer: tuple[int, dict[str, Any]], trace_id: str) -> None:
    """The one 404 every unknown, queued or out-of-scope id gets: nothing tells them apart."""
    status, body = answer
    assert status == 404, body
    assert body["error"]["code"] == "NOT_FOUND" and body["error"]["message"] == "Trace not found"
    assert body["error"]["details"] == [
        {
            "type": "not_found",
            "msg": f"No stored or dead-lettered trace {trace_id} for this API key (it may still be queued)",
            "path": "id",
            "location": "path",
        }
    ]


def mibo(settings: Settings, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "shared.ops.cli.main", *args],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == expect, (out.returncode, out.stdout, out.stderr)
    return out


async def index_rows(adb: psycopg.AsyncConnection, trace_id: str) -> list[tuple[Any, ...]]:
    cur = await adb.execute(
        "SELECT reason, stage, attempt, resolved_at, failed_at FROM dlq_index WHERE trace_id = %s"
        " ORDER BY attempt",
        (uuid.UUID(trace_id),),
    )
    return await cur.fetchall()


def as_batch(records: list[Record]) -> Batch:
    batch: Batch = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        batch[TopicPartition(record.topic, record.partition)].append(record)
    return dict(batch)


async def test_dead_lettered_then_fixed_replayed_and_stored(
    settings: Settings,
    ingest: Service,
    router: Service,
    storage: Service,
    dlq_tap: TopicTap,
    adb: psycopg.AsyncConnection,
) -> None:
    tenant = await make_tenant(settings)
    workflow = f"wf-receipt-{uuid.uuid4().hex[:6]}"
    external = f"exec-{uuid.uuid4().hex[:6]}"
    before = dt.datetime.now(dt.UTC)
    # workflowId names no platform yet: it narrows nothing, and three platforms remain
    trace = await send(
        ingest, tenant.keys["all"], {"data": {"q": 1}, "metadata": {"workflowId": workflow}}, external
    )

    data = await wait_receipt(ingest, trace, tenant.keys["all"], "dead_lettered")
    assert data["id"] == trace and data["externalId"] == external and data["platformId"] is None
    letter = data["deadLetter"]
    assert (letter["reason"], letter["stage"], letter["attempt"]) == ("platform_ambiguous", "router", 1)
    assert workflow in letter["detail"] and "n8n prod" in letter["detail"]
    assert sorted(letter["candidates"]) == sorted(str(p) for p in (tenant.n8n, tenant.flowise, tenant.http))
    failed = dt.datetime.fromisoformat(letter["failedAt"])
    assert before - dt.timedelta(seconds=1) <= failed <= dt.datetime.now(dt.UTC)
    assert dt.datetime.fromisoformat(data["receivedAt"]) <= failed
    (dead,) = [r for r in dlq_tap.records if r.key == f"{tenant.project_id}:{external}".encode()]
    assert read_headers(dead.headers)["dlq-failed-at"] == letter["failedAt"]

    # Not this key's (restricted, and not its sender), not this project's: unknown, like a random id.
    other = await make_tenant(settings)
    assert_unknown(await receipt(ingest, trace, tenant.keys["n8n"]), trace)
    assert_unknown(await receipt(ingest, trace, other.keys["all"]), trace)
    unknown = str(uuid.uuid4())
    assert_unknown(await receipt(ingest, unknown, tenant.keys["all"]), unknown)

    # The operator sees the same receipt, by id and by external id.
    by_id = mibo(settings, "trace", trace, "--project", str(tenant.project_id))
    assert f"trace {trace}  dead-lettered" in by_id.stdout and "platform_ambiguous" in by_id.stdout
    assert "n8n prod (" in by_id.stdout  # candidates by name
    (as_json,) = json.loads(
        mibo(settings, "trace", external, "--project", str(tenant.project_id), "--json").stdout
    )
    assert as_json["status"] == "dead_lettered" and as_json["deadLetter"]["failedAt"] == letter["failedAt"]

    # Fixed and replayed: stored, and the index entry resolved by the write that stored it.
    await registry.update_platform(adb, tenant.project_id, tenant.n8n, workflow_id=workflow)
    replayed = mibo(settings, "dlq", "replay", "--key-id", str(tenant.key_ids["all"]))
    assert "replayed 1 record(s)" in replayed.stderr
    stored = await wait_receipt(ingest, trace, tenant.keys["all"], "stored")
    assert (
        stored["id"] == trace
        and stored["platformId"] == str(tenant.n8n)
        and stored["payload"] == {"data": {"q": 1}, "metadata": {"workflowId": workflow}}
    )
    assert (await receipt(ingest, trace, tenant.keys["n8n"]))[0] == 200  # on its platform now
    ((reason, stage, attempt, resolved, _),) = await index_rows(adb, trace)
    assert (reason, stage, attempt) == ("platform_ambiguous", "router", 1) and resolved is not None

    (operator,) = json.loads(
        mibo(settings, "trace", external, "--project", str(tenant.project_id), "--json").stdout
    )
    assert operator["status"] == "stored" and operator["platformName"] == "n8n prod"
    assert [(d["reason"], d["resolvedAt"] is not None) for d in operator["deadLetters"]] == [
        ("platform_ambiguous", True)
    ]
    text = mibo(settings, "trace", trace, "--project", tenant.project_id.hex).stdout
    assert "stored" in text and f"n8n prod ({tenant.n8n})" in text and ", resolved " in text

    # Its dead letter indexed again, after the store (as when the indexer lags a quick replay):
    # it comes in resolved.
    await adb.execute("DELETE FROM dlq_index WHERE trace_id = %s", (uuid.UUID(trace),))
    db = Database(libpq_url(settings.database_url), name="test dlq_index")
    try:
        await IndexStep(db, StorageMetrics())(as_batch([dead]))
    finally:
        await db.close()
    ((_, _, _, resolved, _),) = await index_rows(adb, trace)
    assert resolved is not None


async def test_a_queued_trace_is_unknown(settings: Settings, ingest: Service, service_logs: Path) -> None:
    """Accepted (202) but not through the pipeline: an ingest process on topics no router reads."""
    tenant = await make_tenant(settings)
    stranded = msgspec.structs.replace(settings, kafka_topic_prefix=f"{settings.kafka_topic_prefix}queued.")
    await ensure_topics(stranded)
    lonely = start_ingest(stranded, service_logs)
    try:
        trace = await send(lonely, tenant.keys["all"], {"data": "waiting"})
        await asyncio.sleep(1)
        assert_unknown(await receipt(lonely, trace, tenant.keys["all"]), trace)
        assert_unknown(await receipt(ingest, trace, tenant.keys["all"]), trace)
        out = mibo(settings, "trace", trace, "--project", str(tenant.project_id), "--json", expect=1)
        assert json.loads(out.stdout) == [
            {"id": trace, "status": "unknown", "requestedId": trace, "deadLetters": []}
        ]
    finally:
        lonely.stop()


async def test_dead_letters_are_scoped_like_traces(
    settings: Settings, topics: Topics, ingest: Service, router: Service, storage: Service
) -> None:
    tenant = await make_tenant(settings)
    other = await make_tenant(settings)
    keys = tenant.keys

    # A restricted key's own ambiguous trace (no hints; its two platforms): its sender and the
    # project's unrestricted key see it; a key restricted elsewhere does not.
    mine = await send(ingest, keys["two"], {"data": "which one?"})
    data = await wait_receipt(ingest, mine, keys["two"], "dead_lettered")
    assert sorted(data["deadLetter"]["candidates"]) == sorted([str(tenant.n8n), str(tenant.flowise)])
    assert (await receipt(ingest, mine, keys["all"]))[1]["data"]["status"] == "dead_lettered"
    assert_unknown(await receipt(ingest, mine, keys["n8n"]), mine)
    assert_unknown(await receipt(ingest, mine, other.keys["all"]), mine)

    # A hint that matches only a platform outside the sender's scope: the sender learns that much,
    # but not which platform; the unrestricted key reads the operator's sentence.
    outside = await send(ingest, keys["n8n"], {"data": 1, "metadata": {"chatflowId": tenant.chatflow_id}})
    data = await wait_receipt(ingest, outside, keys["n8n"], "dead_lettered")
    assert data["deadLetter"]["reason"] == "platform_not_allowed"
    assert data["deadLetter"]["candidates"] == [] and "flowise bot" not in data["deadLetter"]["detail"]
    assert "outside this API key's scope" in data["deadLetter"]["detail"]
    full = (await receipt(ingest, outside, keys["all"]))[1]["data"]["deadLetter"]
    assert "flowise bot" in full["detail"] and full["candidates"] == [str(tenant.flowise)]

    # Dead-lettered by storage on its routed platform (PostgreSQL refuses \u0000 in jsonb): the
    # platform decides, as for a stored trace.
    poison = routed_envelope(tenant, raw_body=b'{"data": "nul \\u0000 here"}', platform=tenant.http)
    await produce(settings, topics.routed, [poison])
    refused = str(poison.trace_id)
    data = await wait_receipt(ingest, refused, keys["all"], "dead_lettered")
    assert data["platformId"] == str(tenant.http)
    assert (data["deadLetter"]["reason"], data["deadLetter"]["stage"]) == ("storage_rejected", "storage")
    assert "PostgreSQL refused" in data["deadLetter"]["detail"]
    assert_unknown(await receipt(ingest, refused, keys["two"]), refused)  # http is not among its platforms
    assert_unknown(await receipt(ingest, refused, other.keys["all"]), refused)


async def test_the_index_is_idempotent(
    settings: Settings,
    topics: Topics,
    ingest: Service,
    router: Service,
    storage: Service,
    dlq_tap: TopicTap,
    adb: psycopg.AsyncConnection,
) -> None:
    tenant = await make_tenant(settings)
    traces = [await send(ingest, tenant.keys["all"], {"data": i}) for i in range(5)]
    for trace in traces:
        await wait_receipt(ingest, trace, tenant.keys["all"], "dead_lettered")
    prefix = f"{tenant.project_id}:".encode()
    records = [r for r in dlq_tap.records if r.key is not None and r.key.startswith(prefix)]
    assert len(records) == 5

    async def snapshot() -> list[tuple[Any, ...]]:
        cur = await adb.execute(
            'SELECT topic, "partition", "offset", trace_id, reason, detail, failed_at, attempt, indexed_at'
            ' FROM dlq_index WHERE project_id = %s ORDER BY "partition", "offset"',
            (tenant.project_id,),
        )
        return await cur.fetchall()

    before = await snapshot()
    assert len(before) == 5 and {str(row[3]) for row in before} == set(traces)
    # The same records delivered again (a crash before the commit, a rebalance): nothing added.
    metrics = StorageMetrics()
    db = Database(libpq_url(settings.database_url), name="test dlq_index")
    try:
        step = IndexStep(db, metrics)
        await step(as_batch(records))
        await step(as_batch(records + records))
    finally:
        await db.close()
    assert await snapshot() == before
    assert metrics.dlq_indexed._value.get() == 0 and metrics.dlq_index_duplicates._value.get() == 15

    # The whole topic of this session, indexed exactly once.
    async def caught_up() -> bool:
        cur = await adb.execute(
            'SELECT count(*), count(DISTINCT ("partition", "offset")) FROM dlq_index WHERE topic = %s',
            (topics.dlq,),
        )
        row = await cur.fetchone()
        return row is not None and row[0] == row[1] == len(dlq_tap.records)

    await eventually(caught_up, timeout=30, what="the index to hold every record of the topic once")


async def test_dlq_stats_from_the_index_equal_the_topic_s(
    settings: Settings,
    topics: Topics,
    ingest: Service,
    router: Service,
    storage: Service,
    dlq_tap: TopicTap,
    adb: psycopg.AsyncConnection,
) -> None:
    tenant = await make_tenant(settings)
    ids = [await send(ingest, tenant.keys["all"], {"data": i}) for i in range(3)]  # ambiguous
    ids += [
        await send(ingest, tenant.keys["all"], {"data": 1, "platformId": str(uuid.uuid4())}) for _ in range(2)
    ]
    poison = routed_envelope(tenant, raw_body=b'{"data": "\\u0000"}', platform=tenant.n8n, key="n8n")
    await produce(settings, topics.routed, [poison])
    ids.append(str(poison.trace_id))

    async def indexed() -> bool:
        cur = await adb.execute("SELECT count(*) FROM dlq_index WHERE project_id = %s", (tenant.project_id,))
        row = await cur.fetchone()
        return row is not None and row[0] == len(ids)

    await eventually(indexed, timeout=30, what="the tenant's dead letters to be indexed")
    groups = ("total", "reason", "key", "platform", "age")
    project = str(tenant.project_id)
    index = json.loads(mibo(settings, "dlq", "stats", "--project", project, "--json").stdout)
    topic = json.loads(mibo(settings, "dlq", "stats", "--project", project, "--json", "--from-topic").stdout)
    assert (index["source"], topic["source"]) == ("index", "topic")
    assert {g: index[g] for g in groups} == {g: topic[g] for g in groups}
    assert index["total"] == 6 and index["reason"] == {
        "platform_ambiguous": 3,
        "platform_not_found": 2,
        "storage_rejected": 1,
    }
    assert index["state"] == {"unresolved": 6}
    narrowed = ("--reason", "platform_not_found", "--platform", str(tenant.n8n), "--newer-than", "1h")
    one = json.loads(mibo(settings, "dlq", "stats", "--project", project, *narrowed, "--json").stdout)
    other = json.loads(
        mibo(settings, "dlq", "stats", "--project", project, *narrowed, "--json", "--from-topic").stdout
    )
    assert {g: one[g] for g in groups} == {g: other[g] for g in groups}

    # ... and over the whole topic of this session, once the index has caught up with it
    async def caught_up() -> bool:
        cur = await adb.execute("SELECT count(*) FROM dlq_index WHERE topic = %s", (topics.dlq,))
        row = await cur.fetchone()
        return row is not None and row[0] == len(dlq_tap.records)

    await eventually(caught_up, timeout=30, what="the index to catch up with the topic")
    everything = json.loads(mibo(settings, "dlq", "stats", "--json").stdout)
    from_topic = json.loads(mibo(settings, "dlq", "stats", "--json", "--from-topic").stdout)
    assert {g: everything[g] for g in groups} == {g: from_topic[g] for g in groups}
    human = mibo(settings, "dlq", "stats", "--project", project).stdout
    assert human.startswith(f"6 dead-lettered record(s) indexed from {topics.dlq}") and "unresolved" in human


async def test_trace_cli_by_external_id_lists_every_trace_of_the_project(
    settings: Settings, ingest: Service, router: Service, storage: Service
) -> None:
    tenant = await make_tenant(settings)
    external = f"exec-{uuid.uuid4().hex[:6]}"
    keys = tenant.keys
    on_n8n = await send(ingest, keys["all"], {"data": "a", "platformId": str(tenant.n8n)}, external)
    on_flowise = await send(ingest, keys["all"], {"data": "b", "platformId": str(tenant.flowise)}, external)
    lost = await send(ingest, keys["all"], {"data": "c"}, external)  # ambiguous: dead-lettered
    await wait_receipt(ingest, on_n8n, keys["all"], "stored")
    await wait_receipt(ingest, on_flowise, keys["all"], "stored")
    await wait_receipt(ingest, lost, keys["all"], "dead_lettered")

    project_name = await registry_project_name(settings, tenant.project_id)
    out = mibo(settings, "trace", external, "--project", project_name, "--json")
    found = {(r["status"], r["id"], r.get("platformName")) for r in json.loads(out.stdout)}
    assert found == {
        ("stored", on_n8n, "n8n prod"),
        ("stored", on_flowise, "flowise bot"),
        ("dead_lettered", lost, None),
    }
    text = mibo(settings, "trace", external, "--project", project_name).stdout
    assert text.count(f"external id  {external}") == 3
    assert f"n8n prod ({tenant.n8n})" in text and f"flowise bot ({tenant.flowise})" in text

    missing = mibo(settings, "trace", "no-such-execution", "--project", project_name, expect=1)
    assert missing.stdout == "" and "no trace with id or external id 'no-such-execution'" in missing.stderr
    wrong = mibo(settings, "trace", external, "--project", "no-such-project", expect=1)
    assert "no project" in wrong.stderr


async def registry_project_name(settings: Settings, project_id: uuid.UUID) -> str:
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as conn:
        return (await registry.get_project(conn, project_id)).name


async def test_large_answers_are_gzipped_when_asked(
    settings: Settings, topics: Topics, ingest: Service, storage: Service, tenant: Tenant
) -> None:
    big = {"data": {"rows": [{"i": i, "text": f"row {i} " * 8} for i in range(20_000)]}}  # ~2.4 MB
    envelope = routed_envelope(tenant, raw_body=msgspec.json.encode(big), platform=tenant.http)
    await produce(settings, topics.routed, [envelope])
    trace = str(envelope.trace_id)
    await wait_receipt(ingest, trace, tenant.keys["all"], "stored")
    url = f"{ingest.url}/public/traces/{trace}"

    async def fetch(accept: str | None) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {"x-api-key": tenant.keys["all"]}
        if accept is not None:
            headers["Accept-Encoding"] = accept
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(url, headers=headers) as resp:
                return resp, await resp.read()

    plain_resp, plain = await fetch("identity")
    zipped_resp, zipped = await fetch("gzip, deflate, br")
    assert "Content-Encoding" not in plain_resp.headers
    assert zipped_resp.headers["Content-Encoding"] == "gzip"
    assert plain_resp.headers["Vary"] == zipped_resp.headers["Vary"] == "Accept-Encoding"
    assert len(zipped) < len(plain) / 10, (len(zipped), len(plain))
    unzipped = json.loads(gzip.decompress(zipped))
    expected = json.loads(plain)
    assert unzipped["data"] == expected["data"] and unzipped["data"]["payload"] == big
    refused_resp, _ = await fetch("gzip;q=0, identity")
    assert "Content-Encoding" not in refused_resp.headers

    # a small answer is sent as it is, whatever the client takes
    small = routed_envelope(tenant, platform=tenant.http)
    await produce(settings, topics.routed, [small])
    await wait_receipt(ingest, str(small.trace_id), tenant.keys["all"], "stored")
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(
            f"{ingest.url}/public/traces/{small.trace_id}",
            headers={"x-api-key": tenant.keys["all"], "Accept-Encoding": "gzip"},
        ) as resp:
            assert "Content-Encoding" not in resp.headers and resp.headers["Vary"] == "Accept-Encoding"
            assert json.loads(await resp.read())["data"]["status"] == "stored"
