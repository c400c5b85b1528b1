"""Kafka producer/consumer factories with the SPEC's defaults, topic creation, readiness.

Producers: ``acks=all`` + idempotence (no duplicates from producer retries, order kept per
partition) + zstd compression + a small linger so concurrent requests share batches.
Consumers: manual commits only (offsets are committed after the work they stand for is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from shared.contracts.topics import Topics
from shared.runtime.settings import Settings

# One record as every consumer here reads it: raw bytes in, decoding is the caller's step.
# (aiokafka ships no type information, so to mypy this is ``Any``; the name still says what is meant.)
Record: TypeAlias = ConsumerRecord[bytes, bytes]

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "compression_type": "zstd",
    "linger_ms": 5,
    "max_batch_size": 1024 * 1024,
    "max_request_size": 16 * 1024 * 1024,
    "request_timeout_ms": 30_000,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "max_partition_fetch_bytes": 16 * 1024 * 1024,
    "fetch_max_bytes": 64 * 1024 * 1024,
}

# The hot workers' consumers (router, storage) wait for a fetch to fill up a little:
# under load a fetch then carries tens of records per partition instead of a handful, and every
# per-fetch and per-batch cost (fetch and produce requests, the offset commit, the database round
# trips of a storage batch) is shared by more traces. bench/router.py measured, at 3,000 traces/s,
# 0.055 → 0.033 ms of router CPU per trace. The price is latency when traffic is light: a fetch
# answers after WORKER_FETCH["fetch_max_wait_ms"] at most, once per stage.
WORKER_FETCH: dict[str, Any] = {"fetch_min_bytes": 256 * 1024, "fetch_max_wait_ms": 50}

# Topic-level settings: a trace body may be up to MAX_BODY_BYTES, plus its envelope.
TOPIC_CONFIG = {"max.message.bytes": str(16 * 1024 * 1024)}


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, **(PRODUCER_DEFAULTS | overrides)
    )


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        **(CONSUMER_DEFAULTS | overrides),
    )


async def ensure_topics(settings: Settings) -> Topics:
    """Create the contract's topics if they are missing; existing ones are left as they are."""
    topics = Topics.with_prefix(settings.kafka_topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=name,
                num_partitions=settings.kafka_topic_partitions,
                replication_factor=settings.kafka_replication_factor,
                topic_configs=TOPIC_CONFIG,
            )
            for name in topics.all()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them first
    finally:
        await admin.close()
    return topics


async def kafka_ready(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    """True when the broker answers a metadata round trip within ``timeout`` seconds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000))
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # "Unable connect" while the broker starts is expected
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except (KafkaConnectionError, KafkaError, TimeoutError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        quiet.setLevel(level)


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the broker for fresh topic metadata — what an unsubscribed consumer needs before it
    can list a topic's partitions. aiokafka offers no public call for it; this is the one place
    that uses the private client."""
    await consumer._client.force_metadata_update()


def reader(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer outside any group, reading from the beginning, for tools that read a whole topic
    (the DLQ reader, the tests' topic taps): reading it changes nothing for anybody."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
