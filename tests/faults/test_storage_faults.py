"""The storage worker under faults, with a steady stream of a few thousand traces: ``kill -9``
mid-stream then a restart, and a PostgreSQL restart while it writes. Afterwards every trace is
stored exactly once (nothing lost, nothing twice), and through the database outage the worker
never exited."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import psycopg
import pytest

from shared.contracts.envelope import RoutedEnvelope
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Tenant, metric_value, start_worker
from shared.runtime.settings import Settings, libpq_url
from tests.services import Services
from tests.storage_helpers import body, count_stored, eventually, routed_envelope, stream

TRACES = 2500


def envelopes(tenant: Tenant, run: str) -> list[RoutedEnvelope]:
    """Half keyed by trace id, half by an external id of their own."""
    return [
        routed_envelope(tenant, raw_body=body(f"{run} {i}"), external_id=f"{run}-{i}" if i % 2 else None)
        for i in range(TRACES)
    ]


async def assert_each_stored_once(
    settings: Settings, tenant: Tenant, run: str, sent: list[RoutedEnvelope]
) -> None:
    ids = [e.trace_id for e in sent]

    async def all_there() -> bool:
        try:
            return (await count_stored(settings, ids))[0] >= len(ids)
        except psycopg.OperationalError:
            return False

    await eventually(all_there, timeout=120, interval=0.5, what=f"all {len(ids)} traces stored")
    assert await count_stored(settings, ids) == (len(ids), len(ids))
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT external_id) FROM traces WHERE project_id = %s AND external_id LIKE %s",
            (tenant.project_id, f"{run}-%"),
        )
        assert await cur.fetchone() == (len(ids) // 2, len(ids) // 2)


async def at_least(settings: Settings, ids: list[uuid.UUID], count: int) -> bool:
    try:
        return (await count_stored(settings, ids))[0] >= count
    except psycopg.OperationalError:
        return False


async def test_kill_9_mid_stream_then_restart_stores_every_trace_once(
    settings: Settings, topics: Topics, tenant: Tenant, service_logs: Path
) -> None:
    run = f"kill-{uuid.uuid4().hex[:8]}"
    sent = envelopes(tenant, run)
    ids = [e.trace_id for e in sent]
    first = start_worker("storage_worker", settings, service_logs, STORAGE_BATCH_MAX="100")
    producing = asyncio.create_task(stream(settings, topics.routed, sent, chunk=100, pause=0.1))
    try:
        await eventually(lambda: at_least(settings, ids, 300), timeout=60, what="the stream to be flowing")
        os.kill(first.proc.pid, signal.SIGKILL)  # mid-stream, most likely mid-transaction
        assert first.proc.wait(10) == -signal.SIGKILL
        stored_at_kill = (await count_stored(settings, ids))[0]
        assert stored_at_kill < TRACES, "the kill came too late to prove anything"
        await producing
        second = start_worker("storage_worker", settings, service_logs, STORAGE_BATCH_MAX="100")
        try:
            await assert_each_stored_once(settings, tenant, run, sent)
        finally:
            assert second.stop() == 0
    finally:
        producing.cancel()
        if first.proc.poll() is None:
            first.proc.kill()


async def test_postgresql_restart_during_a_steady_stream(
    services: Services, settings: Settings, topics: Topics, tenant: Tenant, service_logs: Path
) -> None:
    if services.stack is None:
        pytest.skip("restarting PostgreSQL needs the project's local stack (services came from elsewhere)")
    from shared.devstack.stack import Stack

    stack = services.stack
    assert isinstance(stack, Stack)
    run = f"pg-{uuid.uuid4().hex[:8]}"
    sent = envelopes(tenant, run)
    ids = [e.trace_id for e in sent]
    worker = start_worker("storage_worker", settings, service_logs, STORAGE_BATCH_MAX="100")
    producing = asyncio.create_task(stream(settings, topics.routed, sent, chunk=100, pause=0.15))
    try:
        await eventually(lambda: at_least(settings, ids, 300), timeout=60, what="the stream to be flowing")
        errors_before = metric_value(worker, "storage_database_errors_total")
        await asyncio.to_thread(stack.postgres.stop)  # fast shutdown: every connection is cut
        await asyncio.sleep(3)  # the stream goes on into Kafka; the worker retries with backoff
        assert worker.proc.poll() is None
        await asyncio.to_thread(stack.postgres.start)
        await producing
        await assert_each_stored_once(settings, tenant, run, sent)
        assert worker.proc.poll() is None, "the worker exited during the outage"
        assert metric_value(worker, "storage_database_errors_total") > errors_before
        log = worker.log.read_text()
        assert "database write failed; the batch will be retried" in log
        assert "database connection restored" in log
    finally:
        producing.cancel()
        if stack.postgres.pid() is None:
            stack.postgres.start()
        assert worker.stop() == 0
