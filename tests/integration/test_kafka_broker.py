"""The real broker: idempotent producer (acks=all) and a consumer group with manual commits."""

from __future__ import annotations

import asyncio
import uuid

from shared.contracts.topics import Topics
from shared.runtime.kafka import make_consumer, make_producer
from shared.runtime.settings import Settings


async def test_idempotent_produce_then_consume_in_key_order(settings: Settings, topics: Topics) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        # The broker granted a producer id: idempotence is really on, not silently dropped.
        assert producer._txn_manager is not None and producer._txn_manager.has_pid()
        run = uuid.uuid4().hex
        futures = [
            await producer.send(topics.raw, f"{run}:{i}".encode(), key=f"k{i % 4}".encode())
            for i in range(400)
        ]
        acked = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert len(acked) == 400 and all(md.offset >= 0 for md in acked)

    consumer = make_consumer(settings, topics.raw, group_id=f"test-{run}")
    await consumer.start()
    seen: dict[str, list[int]] = {}
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while sum(map(len, seen.values())) < 400 and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    prefix, _, index = record.value.decode().partition(":")
                    if prefix == run:
                        seen.setdefault(record.key.decode(), []).append(int(index))
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sum(map(len, seen.values())) == 400
    for indexes in seen.values():  # versions of one key stay in order
        assert indexes == sorted(indexes)
