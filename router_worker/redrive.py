"""``mibo-ingest replay raw``: re-drive a time range of ``traces.raw`` through the router.

The range is found with Kafka's offsets-for-times on every partition; its records go through the
router's own step (router_worker.route.Router: decode → resolve against today's platforms →
produce to traces.routed / traces.dlq, acks gathered), without a consumer group and without copying
anything back into traces.raw. Traces keep their ids, so storage ignores those it already has.
A checkpoint file (per-partition next offset) lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from router_worker.metrics import RouterMetrics
from router_worker.platforms import PlatformRegistry
from router_worker.route import Router
from shared.contracts.topics import Topics
from shared.runtime.kafka import make_producer, refresh_metadata
from shared.runtime.partition import key_partitioner
from shared.runtime.settings import Settings, libpq_url


@dataclass
class Redrive:
    since: dt.datetime
    until: dt.datetime | None
    start: dict[int, int] = field(default_factory=dict)  # partition → first offset to read
    end: dict[int, int] = field(default_factory=dict)  # partition → first offset not to read

    @property
    def total(self) -> int:
        return sum(max(0, self.end[p] - self.start[p]) for p in self.start)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def load_checkpoint(path: Path | None, plan: Redrive) -> Redrive:
    """Resume: a checkpoint written for the same range moves each partition's start forward."""
    if path is None or not path.exists():
        return plan
    saved = json.loads(path.read_text())
    if saved.get("since") != plan.since.isoformat() or saved.get("until") != (
        plan.until and plan.until.isoformat()
    ):
        raise SystemExit(
            f"checkpoint {path} was written for another time range; remove it or pick another file"
        )
    for partition, offset in saved["next"].items():
        p = int(partition)
        if p in plan.start:
            plan.start[p] = max(plan.start[p], min(offset, plan.end[p]))
    return plan


def save_checkpoint(path: Path | None, plan: Redrive, positions: dict[int, int]) -> None:
    if path is None:
        return
    body = {
        "since": plan.since.isoformat(),
        "until": plan.until and plan.until.isoformat(),
        "next": positions,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


async def _range(
    consumer: AIOKafkaConsumer, topic: str, since: dt.datetime, until: dt.datetime | None
) -> Redrive:
    await refresh_metadata(consumer)  # no subscription: refresh metadata ourselves
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        raise SystemExit(f"topic {topic} does not exist")
    ends = await consumer.end_offsets(partitions)
    starts = await consumer.offsets_for_times({tp: _ms(since) for tp in partitions})
    stops = await consumer.offsets_for_times({tp: _ms(until) for tp in partitions}) if until else {}
    plan = Redrive(since, until)
    for tp in partitions:
        found = starts.get(tp)
        plan.start[tp.partition] = found.offset if found else ends[tp]
        stop = stops.get(tp) if until else None
        plan.end[tp.partition] = stop.offset if stop else ends[tp]
    return plan


async def redrive(
    settings: Settings,
    since: dt.datetime,
    until: dt.datetime | None,
    *,
    checkpoint: Path | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[int, RouterMetrics]:
    """Route every record of the range; returns (records processed, the router's counters)."""
    topics = Topics.with_prefix(settings.kafka_topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=32 * 1024 * 1024,
    )
    producer = make_producer(settings, partitioner=key_partitioner)
    registry = PlatformRegistry(libpq_url(settings.database_url))
    metrics = RouterMetrics()
    await consumer.start()
    await producer.start()
    try:
        plan = load_checkpoint(checkpoint, await _range(consumer, topics.raw, since, until))
        await registry.reload()
        router = Router(producer, topics, registry, metrics)
        todo = {p: o for p, o in plan.start.items() if o < plan.end[p]}
        consumer.assign([TopicPartition(topics.raw, p) for p in todo])
        for partition, offset in todo.items():
            consumer.seek(TopicPartition(topics.raw, partition), offset)
        positions = dict(plan.start)
        total, done = plan.total, 0
        progress(0, total)
        while any(positions[p] < plan.end[p] for p in todo):
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            wanted = {}
            for tp, records in batch.items():
                inside = [r for r in records if r.offset < plan.end[tp.partition]]
                if inside:
                    wanted[tp] = inside
            for partition in todo:
                tp = TopicPartition(topics.raw, partition)
                positions[partition] = min(await consumer.position(tp), plan.end[partition])
                if positions[partition] >= plan.end[partition]:
                    consumer.pause(tp)
            if wanted:
                await router.step(wanted)
                done += sum(len(r) for r in wanted.values())
                save_checkpoint(checkpoint, plan, positions)
                progress(done, total)
        return done, metrics
    finally:
        await consumer.stop()
        await producer.stop()
