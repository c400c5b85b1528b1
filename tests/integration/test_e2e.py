"""The whole pipeline, reconciled: every accepted trace is stored exactly once or dead-lettered
with its expected reason, and the stages' Prometheus counters agree (bench/harness.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec

from shared.devstack.pipeline import TopicTap, make_tenant, start_ingest, start_worker
from shared.devstack.reconcile import Sender, plan, reconcile, settle
from shared.runtime.kafka import ensure_topics
from shared.runtime.settings import Settings


async def test_mixed_traffic_reconciles_exactly(settings: Settings, service_logs: Path) -> None:
    # A pipeline of its own (topics, consumer groups, processes), so its counters are its alone.
    own = msgspec.structs.replace(settings, kafka_topic_prefix=f"e2e{uuid.uuid4().hex[:6]}.")
    topics = await ensure_topics(own)
    tenant = await make_tenant(own)
    ingest = start_ingest(own, service_logs)
    router = start_worker("router_worker", own, service_logs)
    storage = start_worker("storage_worker", own, service_logs)
    dlq_tap = TopicTap(own, topics.dlq)
    await dlq_tap.start()
    try:
        sends = plan(tenant, 300)
        assert {s.expect for s in sends} == {
            "stored",
            "platform_ambiguous",
            "platform_not_found",
            "storage_rejected",
        }
        assert any(s.after is not None for s in sends) and any(s.external_id is None for s in sends)
        sender = Sender([ingest.url], tenant)
        await sender.run(sends)
        assert not sender.refused, sender.refused[:3]
        await settle(own, tenant.project_id, sends, dlq_tap, timeout=60)
        report = await reconcile(
            own, tenant, sends, dlq_tap, {"ingest": [ingest], "router": [router], "storage": [storage]}
        )
    finally:
        await dlq_tap.stop()
        for service in (ingest, router, storage):
            service.stop()
    print(report.table())
    assert report.accepted == 300
    assert report.exact, (report.missing[:5], report.duplicates[:5], report.wrong[:5])
    assert all(report.counter_checks.values()), report.counters
    assert report.counters["ingest accepted"] == 300
