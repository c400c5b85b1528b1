"""The cancel step the ingest API takes before a 503 (ingest_api.enqueue.cancel_unacknowledged),
against the real PostgreSQL: what it leaves in ``trace_cancellations``, what it reports stored,
and what it does when PostgreSQL cannot be reached."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from ingest_api.enqueue import cancel_unacknowledged
from ingest_api.metrics import IngestMetrics
from shared.contracts.envelope import Hints, RawEnvelope, encode
from shared.devstack.pipeline import Tenant, free_port
from shared.runtime.settings import Settings, libpq_url

pytestmark = pytest.mark.integration


def record(tenant: Tenant, trace_id: uuid.UUID) -> bytes:
    return encode(
        RawEnvelope(
            trace_id=trace_id,
            received_at=dt.datetime.now(dt.UTC),
            project_id=tenant.project_id,
            key_id=tenant.key_ids["all"],
            key_restricted=False,
            key_scope=[],
            external_id=None,
            shape="data",
            platform_id=None,
            hints=Hints(),
            body=msgspec.Raw(b'{"data": 1}'),
        )
    )


def counter(metrics: IngestMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(
        libpq_url(settings.database_url), min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    ) as opened:
        yield opened


async def test_cancel_records_the_unstored_ids_and_reports_the_stored_ones(
    pool: AsyncConnectionPool, adb: psycopg.AsyncConnection, tenant: Tenant
) -> None:
    stored_id, lost_id = uuid.uuid4(), uuid.uuid4()
    # A trace whose ack came too late for its request: stored by the time the 503 is decided.
    await adb.execute(
        "INSERT INTO traces (id, project_id, platform_id, body_shape, payload, received_at) "
        "VALUES (%s, %s, %s, 'data', '{}', now())",
        (stored_id, tenant.project_id, tenant.http),
    )
    metrics = IngestMetrics()
    found = await cancel_unacknowledged(pool, [record(tenant, lost_id), record(tenant, stored_id)], metrics)
    assert found == [False, True]  # the stored one is answered as queued after all
    cur = await adb.execute("SELECT id FROM trace_cancellations WHERE id = ANY(%s)", ([stored_id, lost_id],))
    assert {row[0] for row in await cur.fetchall()} == {lost_id}  # only the unstored one is fenced off
    assert counter(metrics, "ingest_traces_cancelled_total") == 1
    assert counter(metrics, "ingest_cancel_found_stored_total") == 1
    assert counter(metrics, "ingest_unfenced_503_total") == 0


async def test_cancelling_again_is_harmless(
    pool: AsyncConnectionPool, adb: psycopg.AsyncConnection, tenant: Tenant
) -> None:
    lost_id = uuid.uuid4()
    metrics = IngestMetrics()
    for _ in range(2):  # a batch and a single route may both cancel an id; a retry may race
        assert await cancel_unacknowledged(pool, [record(tenant, lost_id)], metrics) == [False]
    cur = await adb.execute("SELECT count(*) FROM trace_cancellations WHERE id = %s", (lost_id,))
    assert await cur.fetchone() == (1,)


async def test_postgresql_unreachable_means_503_unfenced_counted(tenant: Tenant) -> None:
    nobody = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    metrics = IngestMetrics()
    async with AsyncConnectionPool(nobody, min_size=0, max_size=1, open=False) as unreachable:
        began = time.monotonic()
        found = await cancel_unacknowledged(
            unreachable, [record(tenant, uuid.uuid4()), record(tenant, uuid.uuid4())], metrics, timeout=1.0
        )
    assert found == [False, False]  # never "stored": both are answered 503
    assert time.monotonic() - began < 3
    assert counter(metrics, "ingest_unfenced_503_total") == 2
    assert counter(metrics, "ingest_traces_cancelled_total") == 0
