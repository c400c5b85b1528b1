"""The router's step: decide every record of a batch, write the outputs, wait for all acks.

Outputs are produced without awaiting each delivery and then gathered, so a batch costs one round
of acknowledgements. The step returns only when every output is acknowledged; only then does
shared.runtime.worker.run_batches commit the batch's offsets.

A trace the current snapshot would dead-letter for a configuration reason but that arrived after
the snapshot was taken triggers one reload first: configuration committed before the trace was
received always counts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from router_worker import output
from router_worker.metrics import RouterMetrics
from router_worker.platforms import PlatformRegistry
from router_worker.resolve import Decision, Routed, resolve
from shared.contracts import dlq
from shared.contracts.envelope import RawEnvelope, decode_raw
from shared.contracts.topics import Topics
from shared.runtime.kafka import Record
from shared.runtime.worker import Batch

log = structlog.get_logger(__name__)

_partitioner = DefaultPartitioner()  # only when traces.raw and traces.routed differ in partitions


@dataclass(slots=True)
class Item:
    record: Record
    envelope: RawEnvelope | None
    decision: Decision


def decode(record: Record) -> RawEnvelope | dlq.DeadLetter:
    if record.value is None:  # a tombstone: nothing to route, and it must not block the partition
        return dlq.DeadLetter("invalid_envelope", "The record has no value (a tombstone?)")
    try:
        return decode_raw(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return dlq.DeadLetter("invalid_envelope", f"The record is not a valid traces.raw envelope: {exc}")


def _needs_fresh_snapshot(item: Item, taken_at: dt.datetime) -> bool:
    return (
        isinstance(item.decision, dlq.DeadLetter)
        and item.envelope is not None
        and item.envelope.received_at >= taken_at
    )


class Router:
    def __init__(
        self, producer: AIOKafkaProducer, topics: Topics, registry: PlatformRegistry, metrics: RouterMetrics
    ):
        self._producer = producer
        self._topics = topics
        self._registry = registry
        self._metrics = metrics

    def _decide(self, record: Record) -> Item:
        decoded = decode(record)
        if isinstance(decoded, dlq.DeadLetter):
            return Item(record, None, decoded)
        return Item(record, decoded, resolve(decoded, self._registry.snapshot))

    async def step(self, batch: Batch) -> None:
        started = time.perf_counter()
        items = [self._decide(record) for records in batch.values() for record in records]
        snapshot = self._registry.snapshot
        if any(_needs_fresh_snapshot(item, snapshot.taken_at) for item in items):
            self._metrics.snapshot_reloads.inc()
            snapshot = await self._registry.reload()
            for item in items:
                if item.envelope is not None and isinstance(item.decision, dlq.DeadLetter):
                    item.decision = resolve(item.envelope, snapshot)
        futures = await self._send_routed(items)
        futures += [await self._send_letter(item) for item in items if not isinstance(item.decision, Routed)]
        await asyncio.gather(*futures)
        self._count(items)
        self._metrics.batch_size.observe(len(items))
        self._metrics.batch_latency.observe(time.perf_counter() - started)
        self._metrics.snapshot_age.set((dt.datetime.now(dt.UTC) - snapshot.taken_at).total_seconds())

    async def _partitions(self, topic: str) -> int:
        return len(await self._producer.partitions_for(topic))

    async def _send_routed(self, items: list[Item]) -> list[asyncio.Future[object]]:
        """Every routed item, as one record batch per partition (``output``: values spliced, the
        source partition kept when the topics match); their futures."""
        at = dt.datetime.now(dt.UTC)
        at_json = output.routed_at_json(at)
        suffixes: dict[tuple[uuid.UUID, str], bytes] = {}
        topic = self._topics.routed
        count = await self._partitions(topic)
        same = count == await self._partitions(self._topics.raw)
        builders: dict[int, BatchBuilder] = {}
        futures: list[asyncio.Future[object]] = []
        for item in items:
            decision = item.decision
            if not isinstance(decision, Routed):
                continue
            assert item.envelope is not None
            record = item.record
            suffix = suffixes.get((decision.platform_id, decision.resolved_by))
            if suffix is None:
                suffix = output.routed_suffix(decision.platform_id, decision.resolved_by, at_json)
                suffixes[(decision.platform_id, decision.resolved_by)] = suffix
            value = output.routed_value(
                record.value, item.envelope, decision.platform_id, decision.resolved_by, at, suffix
            )
            partition = record.partition if same else _partitioner(record.key, list(range(count)), None)
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = self._producer.create_batch()
            if builder.append(key=record.key, value=value, timestamp=None) is None:  # full: send it
                futures.append(await self._producer.send_batch(builder, topic, partition=partition))
                builder = builders[partition] = self._producer.create_batch()
                builder.append(key=record.key, value=value, timestamp=None)  # a first record always fits
        for partition, builder in builders.items():
            if builder.record_count():
                futures.append(await self._producer.send_batch(builder, topic, partition=partition))
        return futures

    async def _send_letter(self, item: Item) -> asyncio.Future[object]:
        record, decision = item.record, item.decision
        assert isinstance(decision, dlq.DeadLetter)
        letter = dlq.letter(
            decision,
            stage="router",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            source_headers=record.headers,
        )
        log.info(
            "dead-lettered",
            reason=decision.reason,
            detail=decision.detail,
            source=f"{record.topic}/{record.partition}/{record.offset}",
        )
        return await self._producer.send(
            self._topics.dlq, letter.value, key=letter.key, headers=letter.headers
        )

    def _count(self, items: list[Item]) -> None:
        self._metrics.consumed.inc(len(items))
        routed: Counter[str] = Counter()
        dead: Counter[str] = Counter()
        for item in items:
            if isinstance(item.decision, Routed):
                routed[item.decision.resolved_by] += 1
            else:
                dead[item.decision.reason] += 1
        for resolved_by, n in routed.items():
            self._metrics.routed.labels(resolved_by).inc(n)
        for reason, n in dead.items():
            self._metrics.dead_lettered.labels(reason).inc(n)
