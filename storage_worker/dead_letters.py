"""Dead-lettering from the storage stage: the original record, explained by headers (SPEC §4).

``letter`` is pure: it keeps the record's original key and value and adds the ``dlq-*`` headers
(``dlq-stage=storage``, the source topic/partition/offset). ``send_all`` produces every letter and
returns only when Kafka acknowledged all of them, because the batch's offsets are committed right
after the step returns: a letter not yet acknowledged would be a trace lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer

from shared.contracts import dlq
from storage_worker.rows import Source

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Letter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: dlq.Reason


def letter(source: Source, dead: dlq.DeadLetter) -> Letter:
    headers = dlq.headers(
        dead,
        stage="storage",
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        attempt=max(1, dlq.attempt_of(source.headers)),
    )
    return Letter(source.key, source.value, headers, dead.reason)


async def send_all(producer: AIOKafkaProducer, topic: str, letters: Sequence[Letter]) -> None:
    """Produce every letter, then wait for all acknowledgements (one round, not one per letter)."""
    if not letters:
        return
    futures = [await producer.send(topic, item.value, key=item.key, headers=item.headers) for item in letters]
    await asyncio.gather(*futures)
    for item in letters:
        log.info("dead-lettered", reason=item.reason, detail=dict(item.headers)[dlq.DETAIL].decode())


def rejected(detail: str) -> dlq.DeadLetter:
    """A row PostgreSQL refused (``storage_rejected``); ``detail`` names the trace and the error."""
    return dlq.DeadLetter("storage_rejected", detail)


def unresolved(detail: str) -> dlq.DeadLetter:
    """A trace routed to a platform that was deleted before it could be stored."""
    return dlq.DeadLetter("platform_unresolved", detail)
