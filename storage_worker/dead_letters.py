"""Dead-lettering from the storage stage: the original record, explained by headers (SPEC §4).

``letter`` is pure: it keeps the record's original key and value and adds the ``dlq-*`` headers
(``dlq-stage=storage``, the source topic/partition/offset). ``send_all`` produces every letter and
returns only when Kafka acknowledged all of them, because the batch's offsets are committed right
after the step returns: a letter not yet acknowledged would be a trace lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer

from shared.contracts import dlq
from storage_worker.rows import Source

log = structlog.get_logger(__name__)


def letter(source: Source, dead: dlq.DeadLetter) -> dlq.Letter:
    return dlq.letter(
        dead,
        stage="storage",
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        key=source.key,
        value=source.value,
        source_headers=source.headers,
    )


async def send_all(producer: AIOKafkaProducer, topic: str, letters: Sequence[dlq.Letter]) -> None:
    """Produce every letter, then wait for all acknowledgements (one round, not one per letter)."""
    if not letters:
        return
    futures = [await producer.send(topic, item.value, key=item.key, headers=item.headers) for item in letters]
    await asyncio.gather(*futures)
    for item in letters:
        log.info("dead-lettered", reason=item.reason, detail=item.detail)


def rejected(detail: str) -> dlq.DeadLetter:
    """A row PostgreSQL refused (``storage_rejected``); ``detail`` names the trace and the error."""
    return dlq.DeadLetter("storage_rejected", detail)


def unresolved(detail: str) -> dlq.DeadLetter:
    """A trace routed to a platform that was deleted before it could be stored."""
    return dlq.DeadLetter("platform_unresolved", detail)
