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
from dataclasses import dataclass

import msgspec
import structlog
from aiokafka import AIOKafkaProducer

from router_worker.metrics import RouterMetrics
from router_worker.platforms import PlatformRegistry
from router_worker.resolve import Decision, Routed, resolve
from shared.contracts import dlq
from shared.contracts.envelope import RawEnvelope, decode_raw, encode, routed
from shared.contracts.topics import Topics
from shared.runtime.kafka import Record
from shared.runtime.worker import Batch

log = structlog.get_logger(__name__)


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
        futures = [await self._send(item) for item in items]
        await asyncio.gather(*futures)
        self._count(items)
        self._metrics.batch_size.observe(len(items))
        self._metrics.batch_latency.observe(time.perf_counter() - started)
        self._metrics.snapshot_age.set((dt.datetime.now(dt.UTC) - snapshot.taken_at).total_seconds())

    async def _send(self, item: Item) -> asyncio.Future[object]:
        record, decision = item.record, item.decision
        if isinstance(decision, Routed):
            assert item.envelope is not None
            value = encode(routed(item.envelope, decision.platform_id, decision.resolved_by))
            return await self._producer.send(self._topics.routed, value, key=record.key)
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
        for item in items:
            if isinstance(item.decision, Routed):
                self._metrics.routed.labels(item.decision.resolved_by).inc()
            else:
                self._metrics.dead_lettered.labels(item.decision.reason).inc()
