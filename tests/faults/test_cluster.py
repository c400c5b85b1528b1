"""A three-broker cluster under load: one broker kill -9 and one rebalance, reconciled exactly.

A short version of ``make chaos``'s cluster scenarios (bench/chaos_cluster.py): a KRaft cluster
of its own (``Stack.up(brokers=3)``, on the session's PostgreSQL), topics with replication factor
3 and ``min.insync.replicas=2``, one ingest process, two routers and two storage workers in their
groups. While traces flow, the broker leading most ``traces.raw`` partitions is killed -9 (and
restarted), and one router is killed -9 (its partitions go to the other). Then every accepted
trace is stored exactly once or dead-lettered: no 202 lost, nothing skipped, nothing doubled.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shared.devstack import cluster
from shared.devstack.pipeline import Service, TopicTap, make_tenant, start_ingest, start_worker
from shared.devstack.reconcile import Sender, plan, reconcile, settle
from shared.devstack.stack import Stack
from shared.runtime.kafka import ensure_topics
from shared.runtime.settings import Settings
from tests.services import Services

pytestmark = pytest.mark.integration

TRACES = 400
PARTITIONS = 6


@pytest.fixture(scope="module")
def cluster_stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Three brokers and their controller, on free ports; PostgreSQL is the session's."""
    root = tmp_path_factory.mktemp("cluster-stack")
    stack = Stack(root, random_ports=True, cache_dir=Path(__file__).resolve().parents[2] / ".cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DATABASE_URL", services.database_url)
        env.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
        stack.up(services=False, brokers=3, log=False)
    try:
        yield stack
    finally:
        stack.down(log=False)


async def test_broker_kill_and_rebalance_under_load(
    cluster_stack: Stack, settings: Settings, service_logs: Path
) -> None:
    s = msgspec.structs.replace(
        settings,
        kafka_bootstrap_servers=cluster_stack.bootstrap,
        kafka_replication_factor=3,
        kafka_topic_partitions=PARTITIONS,
        kafka_topic_prefix=settings.kafka_topic_prefix + "cluster.",
        produce_timeout_seconds=5.0,
    )
    topics = await ensure_topics(s)
    state = await cluster.partitions(s.kafka_bootstrap_servers, topics.raw)
    assert all(len(p.replicas) == 3 for p in state.values()), state
    tenant = await make_tenant(s)
    started: list[Service] = []
    try:
        ingest = start_ingest(s, service_logs)
        started.append(ingest)
        routers = [start_worker("router_worker", s, service_logs) for _ in range(2)]
        started += routers
        storage = [start_worker("storage_worker", s, service_logs) for _ in range(2)]
        started += storage
        async with TopicTap(s, topics.dlq) as dlq_tap:
            sends = plan(tenant, TRACES, seed=17, all_external_ids=True)
            sender = Sender([ingest.url], tenant, concurrency=8, rate=40)
            sending = asyncio.create_task(sender.run(sends))
            while sum(1 for x in sends if x.trace_id) < TRACES // 4:
                assert not sending.done()
                await asyncio.sleep(0.05)

            # 1. kill -9 the broker leading most traces.raw partitions; leaders move to the others
            state, _ = await cluster.wait_until(
                s.kafka_bootstrap_servers,
                topics.raw,
                lambda st: all(p.leader >= 0 for p in st.values()),
                30,
                "every partition has a leader",
            )
            victim = cluster.busiest_leader(state)
            broker = cluster.node(cluster_stack.nodes, victim)
            cluster.kill9(broker)
            await cluster.wait_until(
                s.kafka_bootstrap_servers,
                topics.raw,
                lambda st: all(p.leader not in (victim, -1) for p in st.values()),
                60,
                "leaders moved",
            )
            # 2. kill -9 one router: the group gives its partitions to the other one
            routers[0].proc.send_signal(signal.SIGKILL)
            routers[0].proc.wait(10)
            held, _ = await cluster.wait_for_group(
                s.kafka_bootstrap_servers, f"{s.kafka_topic_prefix}router_worker", 1, PARTITIONS, 60
            )
            assert list(held.values()) == [list(range(PARTITIONS))]
            broker.start()
            await asyncio.wait_for(sending, 240)
            await cluster.wait_until(
                s.kafka_bootstrap_servers, topics.raw, cluster.fully_in_sync, 120, "ISR complete"
            )
            await settle(s, tenant.project_id, sends, dlq_tap, timeout=120)
            report = await reconcile(
                s, tenant, sends, dlq_tap, {"ingest": [ingest], "router": routers, "storage": storage}
            )
        assert not sender.refused, sender.refused
        assert report.accepted == TRACES
        assert report.exact, report.table()
        assert not report.missing and not report.duplicates
    finally:
        for service in started:
            if service.proc.poll() is None:
                service.stop()
