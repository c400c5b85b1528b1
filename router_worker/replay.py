"""Replaying dead-lettered records into ``traces.raw`` after the configuration was fixed.

``plan`` selects records (the CLI's filters), marks those already replayed (table
``dlq_replays``, keyed by DLQ position) and says what the router would decide *now*: the same pure
``resolve`` against the current platforms. ``execute`` re-produces the selected records to
``traces.raw`` with their original key and value (so the trace keeps its id and storage stays
idempotent), ``dlq-attempt`` + 1 and ``replayed-from``, waits for every ack, then records the
positions — a crash in between means at most a re-replay, which storage ignores as a duplicate.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg

from router_worker.platforms import Snapshot, load_snapshot
from router_worker.resolve import Routed, resolve
from shared.contracts import dlq
from shared.contracts.envelope import decode_raw
from shared.contracts.topics import Topics
from shared.runtime.dlq_reader import DlqEntry, describe, read
from shared.runtime.kafka import Record, make_producer
from shared.runtime.partition import key_partitioner
from shared.runtime.settings import Settings, libpq_url

REPLAYED_FROM = "replayed-from"


class Candidate(msgspec.Struct, kw_only=True):
    entry: DlqEntry
    now: str  # what the router would decide with today's configuration
    already_replayed: bool
    record: Any = None  # the ConsumerRecord (not serialised)


def preview(value: bytes | None, snapshot: Snapshot) -> str:
    if value is None:
        return "dead-letter again: invalid_envelope"
    try:
        envelope = decode_raw(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "dead-letter again: invalid_envelope"
    decision = resolve(envelope, snapshot)
    if isinstance(decision, Routed):
        platform = snapshot.by_id.get(decision.platform_id)
        name = platform.name if platform else str(decision.platform_id)
        return f"route to {name} ({decision.resolved_by})"
    return f"dead-letter again: {decision.reason}"


async def _replayed_positions(conn: psycopg.AsyncConnection[Any], topic: str) -> set[tuple[int, int]]:
    cur = await conn.execute('SELECT partition, "offset" FROM dlq_replays WHERE topic = %s', (topic,))
    return {(p, o) for p, o in await cur.fetchall()}


async def plan(settings: Settings, keep: Callable[[DlqEntry], bool]) -> list[Candidate]:
    topics = Topics.with_prefix(settings.kafka_topic_prefix)
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        snapshot = await load_snapshot(conn)
        done = await _replayed_positions(conn, topics.dlq)
    candidates = []
    async for record in read(settings.kafka_bootstrap_servers, topics.dlq):
        entry = describe(record)
        if keep(entry):
            candidates.append(
                Candidate(
                    entry=entry,
                    now=preview(record.value, snapshot),
                    already_replayed=(record.partition, record.offset) in done,
                    record=record,
                )
            )
    return candidates


def replay_headers(entry: DlqEntry) -> list[tuple[str, bytes]]:
    return [(dlq.ATTEMPT, str(entry.attempt + 1).encode()), (REPLAYED_FROM, entry.source.encode())]


async def execute(settings: Settings, candidates: list[Candidate]) -> int:
    """Re-produce ``candidates`` (not already replayed) to traces.raw; returns how many."""
    todo = [c for c in candidates if not c.already_replayed]
    if not todo:
        return 0
    topics = Topics.with_prefix(settings.kafka_topic_prefix)
    producer = make_producer(settings, partitioner=key_partitioner)
    await producer.start()
    try:
        futures = []
        for candidate in todo:
            record: Record = candidate.record
            futures.append(
                await producer.send(
                    topics.raw, record.value, key=record.key, headers=replay_headers(candidate.entry)
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    run_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        async with conn.cursor() as cur:
            await cur.executemany(
                """INSERT INTO dlq_replays (topic, partition, "offset", trace_id, reason, run_id)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                [
                    (
                        c.record.topic,
                        c.record.partition,
                        c.record.offset,
                        c.entry.trace_id,
                        c.entry.reason,
                        run_id,
                    )
                    for c in todo
                ],
            )
    return len(todo)
