"""The router worker against the real broker and database: traces posted through the API end up
in traces.routed with the right platform, or in traces.dlq with the right reason and headers."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import psycopg

from shared import registry
from shared.contracts.dlq import read_headers
from shared.contracts.envelope import decode_routed
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, Tenant, TopicTap, make_tenant, metric_value, start_worker
from shared.runtime.kafka import Record, make_producer
from shared.runtime.settings import Settings, libpq_url
from tests.router_helpers import post


async def outcome(
    tenant: Tenant, trace_id: str, routed_tap: TopicTap, dlq_tap: TopicTap, timeout: float = 20
) -> Record:
    key = f"{tenant.project_id}:{trace_id}".encode()
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for tap in (routed_tap, dlq_tap):
            found = [r for r in tap.records if r.key == key]
            if found:
                return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"trace {trace_id} reached neither traces.routed nor traces.dlq")


def routed_to(record: Record, topics: Topics) -> tuple[uuid.UUID, str]:
    assert record.topic == topics.routed, read_headers(record.headers)
    envelope = decode_routed(record.value)
    return envelope.routed_platform_id, envelope.resolved_by


def dead_lettered(record: Record, topics: Topics, reason: str) -> dict[str, str]:
    assert record.topic == topics.dlq, f"routed instead of dead-lettered ({reason})"
    headers = read_headers(record.headers)
    assert headers["dlq-reason"] == reason, headers
    assert headers["dlq-stage"] == "router"
    assert headers["dlq-detail"] and headers["dlq-failed-at"] and headers["dlq-attempt"] == "1"
    topic, partition, offset = headers["dlq-source"].split("/")
    assert topic == topics.raw and int(partition) >= 0 and int(offset) >= 0
    return headers


async def test_routing_table_through_the_api(
    ingest: Service, router: Service, tenant: Tenant, topics: Topics, routed_tap: TopicTap, dlq_tap: TopicTap
) -> None:
    t = tenant
    cases: list[tuple[str, dict, tuple[uuid.UUID, str] | str]] = [
        ("n8n", {"data": {"x": 1}}, (t.n8n, "single_candidate")),  # restricted to one: automatic
        ("two", {"data": 1, "metadata": {"workflowId": t.workflow_id}}, (t.n8n, "hint")),
        ("two", {"data": 1, "metadata": {"chatflowId": t.chatflow_id}}, (t.flowise, "hint")),
        ("two", {"data": 1, "platformId": str(t.flowise)}, (t.flowise, "explicit")),
        ("all", {"data": 1, "metadata": {"mibo": {"platform_id": str(t.http)}}}, (t.http, "explicit")),
        ("all", {"data": 1, "metadata": {"workflowId": t.workflow_id}}, (t.n8n, "hint")),
        ("all", {"data": 1}, "platform_ambiguous"),
        ("two", {"data": 1}, "platform_ambiguous"),
        ("all", {"data": 1, "platformId": str(uuid.uuid4())}, "platform_not_found"),
        ("two", {"data": 1, "metadata": {"workflowId": "wf-nobody"}}, "platform_ambiguous"),
        (
            "all",
            {"data": 1, "metadata": {"workflowId": t.workflow_id, "chatflowId": t.chatflow_id}},
            "platform_unresolved",
        ),
    ]
    posted = [(await post(ingest, t.keys[key], body), expected) for key, body, expected in cases]
    for trace_id, expected in posted:
        record = await outcome(t, trace_id, routed_tap, dlq_tap)
        if isinstance(expected, str):
            headers = dead_lettered(record, topics, expected)
            if expected == "platform_ambiguous":
                assert headers["dlq-candidates"].count(",") >= 1
        else:
            assert routed_to(record, topics) == expected, trace_id
            assert record.key == f"{t.project_id}:{trace_id}".encode()  # the raw key, kept


async def test_hint_outside_scope_is_not_allowed(
    settings: Settings,
    ingest: Service,
    router: Service,
    topics: Topics,
    routed_tap: TopicTap,
    dlq_tap: TopicTap,
) -> None:
    tenant = await make_tenant(settings)
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        http_only = await registry.create_key(
            conn, settings.key_pepper, tenant.project_id, "http", [tenant.http]
        )
        no_n8n = await registry.create_key(
            conn, settings.key_pepper, tenant.project_id, "http+flowise", [tenant.http, tenant.flowise]
        )
    trace = await post(ingest, no_n8n.key, {"data": 1, "metadata": {"workflowId": tenant.workflow_id}})
    headers = dead_lettered(await outcome(tenant, trace, routed_tap, dlq_tap), topics, "platform_not_allowed")
    assert str(tenant.n8n) in headers["dlq-candidates"]
    assert "outside the key's scope" in headers["dlq-detail"] and str(no_n8n.id) in headers["dlq-detail"]
    # a key restricted to one platform routes there even with a hint nobody configured
    trace = await post(ingest, http_only.key, {"data": 1, "metadata": {"workflowId": "wf-unset"}})
    assert routed_to(await outcome(tenant, trace, routed_tap, dlq_tap), topics) == (
        tenant.http,
        "single_candidate",
    )


async def test_platform_created_just_before_the_trace_counts(
    settings: Settings,
    ingest: Service,
    router: Service,
    topics: Topics,
    routed_tap: TopicTap,
    dlq_tap: TopicTap,
) -> None:
    tenant = await make_tenant(settings)
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        fresh = await registry.create_platform(
            conn, tenant.project_id, "fresh", "n8n", workflow_id="wf-fresh"
        )
    trace = await post(ingest, tenant.keys["all"], {"data": 1, "metadata": {"workflowId": "wf-fresh"}})
    assert routed_to(await outcome(tenant, trace, routed_tap, dlq_tap), topics) == (fresh.id, "hint")


async def test_poison_records_never_block_the_partition(
    settings: Settings,
    tenant: Tenant,
    router: Service,
    topics: Topics,
    dlq_tap: TopicTap,
    routed_tap: TopicTap,
    ingest: Service,
) -> None:
    producer = make_producer(settings)
    await producer.start()
    poison: dict[bytes | None, bytes] = {
        None: b"poison-0",  # a tombstone
        b"not json at all": b"poison-1",
        b'{"v": 99, "trace_id": "x"}': b"poison-2",
        b'{"v": 1}': b"poison-3",
        b"\xff\xfe": b"poison-4",
    }
    try:
        for value, key in poison.items():
            for partition in range(settings.kafka_topic_partitions):
                await producer.send_and_wait(
                    topics.raw, value, key=key + str(partition).encode(), partition=partition
                )
    finally:
        await producer.stop()
    expected = settings.kafka_topic_partitions * len(poison)
    found = await dlq_tap.wait_for_all(lambda r: r.key is not None and r.key.startswith(b"poison-"), expected)
    assert len(found) >= expected
    for record in found:
        headers = read_headers(record.headers)
        assert headers["dlq-reason"] == "invalid_envelope", headers
        assert ("no value" if record.value is None else "not a valid traces.raw envelope") in headers[
            "dlq-detail"
        ]
        assert record.value in poison  # the original value, unchanged
    # and every partition still flows
    ids = [await post(ingest, tenant.keys["n8n"], {"data": i}) for i in range(12)]
    for trace_id in ids:
        assert (await outcome(tenant, trace_id, routed_tap, dlq_tap)).topic == topics.routed
    assert metric_value(router, "router_dead_lettered_total", reason="invalid_envelope") >= expected


async def test_kill_9_mid_stream_loses_nothing(
    settings: Settings,
    tenant: Tenant,
    topics: Topics,
    routed_tap: TopicTap,
    service_logs: Path,
    router: Service,
) -> None:
    """Routers share the group; one is killed -9 mid-stream, the others take over its partitions."""
    from tests.router_helpers import keys_of, produce_raw, raw_envelopes

    envelopes = raw_envelopes(tenant, 3000)
    keys = keys_of(envelopes)
    victim = start_worker("router_worker", settings, service_logs)
    await produce_raw(settings, topics, envelopes)
    await routed_tap.wait_for_all(lambda r: r.key in keys, len(keys) // 10, timeout=60)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    replacement = start_worker("router_worker", settings, service_logs)
    try:
        # none missing (duplicates allowed: a kill -9 re-delivers; storage dedupes)
        assert await routed_tap.wait_for_keys(keys, timeout=120) == keys
    finally:
        replacement.stop()


async def test_sigterm_drains_and_exits_cleanly(
    settings: Settings, topics: Topics, service_logs: Path
) -> None:
    worker = start_worker("router_worker", settings, service_logs)
    assert await asyncio.to_thread(worker.stop) == 0
    assert "stopping: last batch done and committed" in worker.log.read_text()
