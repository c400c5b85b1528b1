"""Kafka away: a 503 means the trace will not be stored.

With a real pipeline (ingest → router → storage) of this module's own (topics, consumer groups,
tenant), the session's broker is paused or killed and brought back:

- a trace answered 503 after it was handed to the producer is cancelled in PostgreSQL first, and
  even when its record reaches Kafka late, it is never stored: a client that retries without
  ``x-request-id`` ends with exactly one row per logical trace (this needs the storage worker's
  fence, ``shared.db.cancellations.fence``);
- once the broker is known to be away, 503s come at once (no produce), ``/readyz`` says 503, and
  the records of traces already answered 503 are dropped from the producer's buffer;
- the API recovers by itself, and every 202 is in Kafka.

Every test leaves the broker running and answering (the ``broker`` fixture restores it), so the
modules that run after this one see a healthy broker whatever happened here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.contracts.envelope import decode_raw
from shared.contracts.topics import Topics
from shared.devstack import processes
from shared.devstack.pipeline import (
    Service,
    Tenant,
    TopicTap,
    make_tenant,
    metric_value,
    start_ingest,
    start_worker,
)
from shared.devstack.stack import Stack
from shared.runtime.kafka import ensure_topics, kafka_ready
from shared.runtime.settings import Settings
from tests.services import Services

pytestmark = pytest.mark.integration

PRODUCE_TIMEOUT = 2.0
LOGICAL_TRACES = 6


# -- the broker, under the test's control; always given back running ---------------------------


@dataclass
class BrokerControl:
    stack: Stack
    bootstrap: str
    paused: int | None = None

    @property
    def pidfile(self) -> Path:
        return self.stack.broker.pidfile

    def kill(self) -> None:
        pid = processes.running(self.pidfile)
        assert pid, "the broker is not running"
        processes.stop(pid, sig=signal.SIGKILL, timeout=10)

    def pause(self) -> None:
        pid = processes.running(self.pidfile)
        assert pid, "the broker is not running"
        os.killpg(pid, signal.SIGSTOP)
        self.paused = pid

    def resume(self) -> None:
        if self.paused is not None:
            os.killpg(self.paused, signal.SIGCONT)
            self.paused = None

    def shut_down(self) -> None:
        """SIGTERM: a graceful shutdown (partitions lose their leader on the way)."""
        pid = processes.running(self.pidfile)
        assert pid, "the broker is not running"
        processes.stop(pid, timeout=60)

    def start(self) -> None:
        self.stack.broker.start()

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not await kafka_ready(self.bootstrap, timeout=3):
            assert time.monotonic() < deadline, "the broker did not come back"
            await asyncio.sleep(0.5)

    async def restore(self) -> None:
        self.resume()
        if not processes.running(self.pidfile):
            self.start()
        await self.wait_ready()


@pytest.fixture
async def broker(services: Services) -> AsyncIterator[BrokerControl]:
    if services.stack is None:
        pytest.skip("stopping the broker needs the project's local stack (services came from elsewhere)")
    control = BrokerControl(services.stack, services.bootstrap)
    try:
        yield control
    finally:
        await control.restore()


# -- a pipeline of this module's own --------------------------------------------------------------


@dataclass
class Pipeline:
    settings: Settings
    topics: Topics
    tenant: Tenant
    raw: TopicTap
    workers: list[Service] = field(default_factory=list)


@pytest.fixture(scope="module")
async def pipeline(settings: Settings, service_logs: Path) -> AsyncIterator[Pipeline]:
    own = msgspec.structs.replace(
        settings, kafka_topic_prefix=f"outage{uuid.uuid4().hex[:6]}.", produce_timeout_seconds=PRODUCE_TIMEOUT
    )
    topics = await ensure_topics(own)
    tenant = await make_tenant(own)
    workers = [
        start_worker("router_worker", own, service_logs),
        start_worker("storage_worker", own, service_logs),
    ]
    raw = TopicTap(own, topics.raw)
    await raw.start()
    try:
        yield Pipeline(own, topics, tenant, raw, workers)
    finally:
        await raw.stop()
        for worker in workers:
            worker.stop()


@pytest.fixture
def ingest(pipeline: Pipeline, service_logs: Path) -> Iterator[Service]:
    service = start_ingest(pipeline.settings, service_logs)
    yield service
    service.stop()


async def settled(pipeline: Pipeline, timeout: float = 180) -> None:
    """Wait until router and storage have committed every record of their source topics (storage
    commits after the database transaction): nothing is still on its way to a row. After a
    kill -9 the broker recovers its logs and the groups rejoin before anything moves: on a loaded
    2-core machine that took over 90 s once, hence the generous bound (a settled pipeline returns
    at once)."""
    settings, topics = pipeline.settings, pipeline.topics
    groups = {
        f"{settings.kafka_topic_prefix}router_worker": topics.raw,
        f"{settings.kafka_topic_prefix}storage_worker": topics.routed,
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            behind = 0
            for group, topic in groups.items():
                partitions = [TopicPartition(topic, p) for p in range(settings.kafka_topic_partitions)]
                ends = await consumer.end_offsets(partitions)
                committed = await admin.list_consumer_group_offsets(group)
                behind += sum(
                    end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
                )
            if behind == 0:
                return
            assert time.monotonic() < deadline, f"pipeline not settled: {behind} records behind"
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await admin.close()


# -- a client that sends no x-request-id and retries as the README says ----------------------------


@dataclass
class Attempt:
    status: int
    seconds: float
    retry_after: str | None
    trace_id: str | None  # data.id of a 202


@dataclass
class Client:
    url: str
    key: str
    run: str
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)

    def body(self, n: int) -> bytes:
        return json.dumps({"data": {"run": self.run, "n": n}}).encode()

    async def post(self, session: aiohttp.ClientSession, n: int) -> Attempt:
        began = time.monotonic()
        async with session.post(
            self.url + "/public/traces",
            data=self.body(n),
            headers={"x-api-key": self.key, "Content-Type": "application/json"},
        ) as resp:
            body = await resp.json()
        attempt = Attempt(
            resp.status,
            time.monotonic() - began,
            resp.headers.get("Retry-After"),
            body["data"]["id"] if resp.status == 202 else None,
        )
        if resp.status != 202:
            assert resp.status == 503, body
            assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert attempt.retry_after is not None and int(attempt.retry_after) > 0
        self.attempts.setdefault(n, []).append(attempt)
        return attempt

    async def until_accepted(self, session: aiohttp.ClientSession, n: int, timeout: float = 120) -> None:
        if self.attempts.get(n) and self.attempts[n][-1].status == 202:
            return
        deadline = time.monotonic() + timeout
        while (await self.post(session, n)).status != 202:
            assert time.monotonic() < deadline, f"trace {n} never accepted"
            await asyncio.sleep(min(float(self.attempts[n][-1].retry_after or 1), 1.0))

    def summary(self) -> str:
        retried = [sum(a.status == 503 for a in tries) for tries in self.attempts.values()]
        return (
            f"{len(retried)} logical traces, {sum(r == 0 for r in retried)} accepted at once, "
            f"{sum(r > 0 for r in retried)} after 503s ({sum(retried)} 503s in all, at most {max(retried)} for one)"
        )

    def report(self) -> str:
        return ", ".join(
            f"#{n}: {sum(a.status == 503 for a in tries)}x503 then 202"
            for n, tries in sorted(self.attempts.items())
        )


async def rows_per_trace(adb: psycopg.AsyncConnection, tenant: Tenant, run: str) -> dict[int, int]:
    cur = await adb.execute(
        "SELECT (payload -> 'data' ->> 'n')::int, count(*) FROM traces "
        "WHERE project_id = %s AND payload -> 'data' ->> 'run' = %s GROUP BY 1",
        (tenant.project_id, run),
    )
    return dict(await cur.fetchall())


def raw_ids(pipeline: Pipeline, run: str) -> dict[uuid.UUID, int]:
    """Trace id → logical trace of every record of this run that reached traces.raw."""
    found = {}
    for record in pipeline.raw.records:
        envelope = decode_raw(record.value)
        body = json.loads(bytes(envelope.body))
        if isinstance(body.get("data"), dict) and body["data"].get("run") == run:
            found[envelope.trace_id] = body["data"]["n"]
    return found


async def cancelled_among(adb: psycopg.AsyncConnection, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    cur = await adb.execute("SELECT id FROM trace_cancellations WHERE id = ANY(%s)", (ids,))
    return {row[0] for row in await cur.fetchall()}


async def stored_among(adb: psycopg.AsyncConnection, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    cur = await adb.execute("SELECT id FROM traces WHERE id = ANY(%s)", (ids,))
    return {row[0] for row in await cur.fetchall()}


async def readyz(session: aiohttp.ClientSession, ingest: Service) -> int:
    async with session.get(ingest.url + "/readyz") as resp:
        return resp.status


# -- the tests ------------------------------------------------------------------------------------


async def test_a_503_trace_that_reaches_kafka_late_is_never_stored(
    broker: BrokerControl, pipeline: Pipeline, ingest: Service, adb: psycopg.AsyncConnection
) -> None:
    """The broker freezes (its connections stay open): the traces handed to it time out and are
    answered 503 — cancelled first — then it thaws and takes them after all. The client retries
    (no x-request-id) until 202. One row per logical trace; the late records are refused."""
    client = Client(ingest.url, pipeline.tenant.keys["n8n"], uuid.uuid4().hex)  # routes to its one platform
    storage = pipeline.workers[1]
    refused_before = metric_value(storage, "storage_cancelled_ignored_total")
    async with aiohttp.ClientSession() as session:
        assert (await client.post(session, -1)).status == 202  # warm: metadata known, broker answered
        broker.pause()
        try:
            first = await asyncio.gather(*(client.post(session, n) for n in range(LOGICAL_TRACES)))
        finally:
            broker.resume()
        assert [a.status for a in first] == [503] * LOGICAL_TRACES
        # handed to the producer and waited for: the state was not known yet
        assert all(a.seconds >= PRODUCE_TIMEOUT * 0.9 for a in first), [a.seconds for a in first]
        assert metric_value(ingest, "ingest_traces_cancelled_total") == LOGICAL_TRACES
        assert metric_value(ingest, "ingest_unfenced_503_total") == 0
        await asyncio.gather(*(client.until_accepted(session, n) for n in range(LOGICAL_TRACES)))

    accepted = {uuid.UUID(tries[-1].trace_id): n for n, tries in client.attempts.items() if n >= 0}
    # the thawed broker took the 503'd records: they reach traces.raw late (and are acknowledged)
    deadline = time.monotonic() + 60
    while len(
        late := {i: n for i, n in raw_ids(pipeline, client.run).items() if i not in accepted and n >= 0}
    ) < (LOGICAL_TRACES):
        assert time.monotonic() < deadline, f"only {len(late)} late records reached Kafka"
        await asyncio.sleep(0.5)
    await settled(pipeline)
    print(
        f"\npaused broker: {client.report()}; late records in traces.raw: {len(late)}; "
        f"late acks counted: {metric_value(ingest, 'ingest_late_acks_total'):g}"
    )
    assert await cancelled_among(adb, list(late)) == set(late)  # what cancel left behind
    assert await cancelled_among(adb, list(accepted)) == set()
    assert await stored_among(adb, list(accepted)) == set(accepted)
    assert await stored_among(adb, list(late)) == set(), "a trace answered 503 was stored (no fence?)"
    assert metric_value(storage, "storage_cancelled_ignored_total") - refused_before == len(late)
    assert await rows_per_trace(adb, pipeline.tenant, client.run) == {n: 1 for n in range(-1, LOGICAL_TRACES)}


async def test_a_dead_broker_means_fast_503s_not_ready_then_recovery_one_row_each(
    broker: BrokerControl, pipeline: Pipeline, ingest: Service, adb: psycopg.AsyncConnection
) -> None:
    """kill -9 of the broker: the traces in flight wait out the produce timeout and are cancelled;
    from then on 503 at once, /readyz 503, and the buffered records of the 503'd traces are
    dropped (they never reach Kafka). The broker comes back: ready again, every retry accepted,
    one row per logical trace, every 202 in Kafka."""
    client = Client(ingest.url, pipeline.tenant.keys["n8n"], uuid.uuid4().hex)  # routes to its one platform
    async with aiohttp.ClientSession() as session:
        assert await readyz(session, ingest) == 200
        assert (await client.post(session, -1)).status == 202
        broker.kill()
        killed_at = time.monotonic()
        first = await asyncio.gather(*(client.post(session, n) for n in range(LOGICAL_TRACES)))
        assert [a.status for a in first] == [503] * LOGICAL_TRACES
        assert all(a.seconds >= PRODUCE_TIMEOUT * 0.9 for a in first), [a.seconds for a in first]
        assert metric_value(ingest, "ingest_traces_cancelled_total") == LOGICAL_TRACES

        # known down now: not ready, and 503 at once
        assert await readyz(session, ingest) == 503
        fast = [await client.post(session, n) for n in range(LOGICAL_TRACES) for _ in range(2)]
        assert [a.status for a in fast] == [503] * len(fast)
        slowest = max(a.seconds for a in fast)
        assert slowest < PRODUCE_TIMEOUT / 4, f"a 503 took {slowest:.2f}s while the broker was known down"
        assert {a.retry_after for a in fast} == {"1"}
        assert metric_value(ingest, "ingest_fast_503_total") >= len(fast)
        assert metric_value(ingest, "ingest_kafka_up") == 0

        # nobody waits on the producer any more: the 503'd records are dropped from its buffer
        deadline = time.monotonic() + 20
        while metric_value(ingest, "ingest_discarded_records_total") < LOGICAL_TRACES:
            assert time.monotonic() < deadline, "the 503'd records were not dropped"
            await asyncio.sleep(0.5)
        outage = time.monotonic() - killed_at

        broker.start()
        restarted_at = time.monotonic()
        while await readyz(session, ingest) != 200:
            assert time.monotonic() - restarted_at < 120, "ingest did not become ready again"
            await asyncio.sleep(0.5)
        ready_after = time.monotonic() - restarted_at
        await asyncio.gather(*(client.until_accepted(session, n) for n in range(LOGICAL_TRACES)))

    accepted = {uuid.UUID(tries[-1].trace_id): n for n, tries in client.attempts.items()}
    deadline = time.monotonic() + 60
    while not set(accepted) <= set(raw_ids(pipeline, client.run)):
        assert time.monotonic() < deadline, "a trace answered 202 is not in Kafka"
        await asyncio.sleep(0.5)
    await settled(pipeline)
    in_raw = raw_ids(pipeline, client.run)
    print(
        f"\nkilled broker: {client.report()}; fast 503s took at most {slowest * 1000:.0f} ms; "
        f"outage {outage:.1f}s before restart, ready {ready_after:.1f}s after it; "
        f"records in traces.raw: {len(in_raw)} for {len(accepted)} accepted"
    )
    assert set(in_raw) == set(accepted), "a dropped (503'd) record reached Kafka after all"
    assert await rows_per_trace(adb, pipeline.tenant, client.run) == {n: 1 for n in range(-1, LOGICAL_TRACES)}


async def test_a_broker_shut_down_under_load_leaves_a_producer_that_recovers(
    broker: BrokerControl, pipeline: Pipeline, ingest: Service, adb: psycopg.AsyncConnection
) -> None:
    """SIGTERM while traces are being sent: the partitions lose their leader, aiokafka gives up
    the batches that wait for one longer than its request timeout — leaving a gap in the
    idempotent producer's sequence numbers, which would make the broker refuse everything it
    sends from then on (OutOfOrderSequenceNumber). The producer is replaced: after the restart
    every trace is accepted, one row each."""
    client = Client(ingest.url, pipeline.tenant.keys["n8n"], uuid.uuid4().hex)
    async with aiohttp.ClientSession() as session:
        assert (await client.post(session, -1)).status == 202
        stopping = asyncio.create_task(asyncio.to_thread(broker.shut_down))
        numbers = iter(range(10_000))

        async def keep_sending() -> None:  # new logical traces for as long as the broker shuts down
            while not stopping.done():
                if (await client.post(session, next(numbers))).status != 202:
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(keep_sending() for _ in range(4)))
        await stopping
        assert any(tries[0].status == 503 for tries in client.attempts.values()), "nothing was in flight"
        await asyncio.sleep(PRODUCE_TIMEOUT * 2)  # longer than the producer's request timeout
        broker.start()
        await broker.wait_ready()
        await asyncio.gather(*(client.until_accepted(session, n) for n in list(client.attempts)))
        # every partition takes writes again (a producer with a sequence gap would be refused on
        # that partition for good; without x-request-id each trace lands on a random partition)
        after = [
            await client.post(session, n)
            for n in range(20_000, 20_000 + 10 * pipeline.settings.kafka_topic_partitions)
        ]
        assert [a.status for a in after] == [202] * len(after)
    accepted = {uuid.UUID(tries[-1].trace_id): n for n, tries in client.attempts.items()}
    deadline = time.monotonic() + 60
    while not set(accepted) <= set(raw_ids(pipeline, client.run)):
        assert time.monotonic() < deadline, "a trace answered 202 is not in Kafka"
        await asyncio.sleep(0.5)
    await settled(pipeline)
    replaced = ingest.log.read_text().count("kafka producer replaced")
    print(f"\ngraceful shutdown: {client.summary()}; producer replaced {replaced}x")
    assert await rows_per_trace(adb, pipeline.tenant, client.run) == {n: 1 for n in client.attempts}


async def test_with_an_external_id_the_503s_and_recovery_keep_every_202_in_kafka(
    broker: BrokerControl, pipeline: Pipeline, ingest: Service
) -> None:
    """The original outage check: 503 with Retry-After while the broker is gone — never a 202
    without an ack — and recovery by itself; every 202 is in traces.raw."""
    run = uuid.uuid4().hex
    accepted: list[str] = []

    async def post(session: aiohttp.ClientSession, i: int) -> int:
        async with session.post(
            ingest.url + "/public/traces",
            data=b'{"data": {"input": "...", "output": "..."}}',
            headers={
                "x-api-key": pipeline.tenant.keys["all"],
                "x-request-id": f"{run}-{i}",
                "Content-Type": "application/json",
            },
        ) as resp:
            if resp.status == 202:
                accepted.append(f"{run}-{i}")
            else:
                assert resp.status == 503, await resp.text()
                assert int(resp.headers["Retry-After"]) > 0
            return resp.status

    async with aiohttp.ClientSession() as session:
        assert await post(session, 0) == 202
        broker.kill()
        assert [await post(session, i) for i in range(1, 4)] == [503, 503, 503]
        broker.start()
        deadline = time.monotonic() + 120
        i = 10
        while await post(session, i) != 202:
            assert time.monotonic() < deadline, "ingest did not recover after the broker came back"
            i += 1
            await asyncio.sleep(0.5)
    keys = {f"{pipeline.tenant.project_id}:{ext}".encode() for ext in accepted}
    assert await pipeline.raw.wait_for_keys(keys) == keys  # no 202 without the record in Kafka
