"""Kafka producer/consumer factories with the SPEC's defaults, topic creation, readiness.

Producers: ``acks=all`` + idempotence (no duplicates from producer retries, order kept per
partition) + zstd compression + a small linger so concurrent requests share batches.
Consumers: manual commits only (offsets are committed after the work they stand for is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code
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
    # The client id names the process, so that a group's description (``dev status``) says which
    # worker holds which partitions.
    defaults = CONSUMER_DEFAULTS | {
        "client_id": f"{group_id or 'reader'}-{os.getpid()}",
        "max_poll_interval_ms": int(settings.kafka_max_poll_interval_seconds * 1000),
    }
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        **(defaults | overrides),
    )


def min_insync_replicas(replication_factor: int) -> int:
    """A write is acknowledged (``acks=all``) once this many replicas have it: all but one, at
    least one — 2 of 3, so one broker may be lost without losing a write or refusing one."""
    return max(1, replication_factor - 1)


def topic_config(replication_factor: int) -> dict[str, str]:
    """Per-topic settings: a trace body may be up to MAX_BODY_BYTES (plus its envelope); no
    unclean leader election (a replica that is not in sync never becomes leader: an acknowledged
    write is never lost to one)."""
    return TOPIC_CONFIG | {
        "min.insync.replicas": str(min_insync_replicas(replication_factor)),
        "unclean.leader.election.enable": "false",
    }


def creation_errors(response: Any) -> list[str]:
    """What a CreateTopics response refused, topic by topic; "already exists" is no error (another
    process created it first)."""
    refused = []
    for entry in getattr(response, "topic_errors", None) or getattr(response, "topics", None) or []:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and isinstance(entry[2], str) else ""
        if code and code != TopicAlreadyExistsError.errno:
            refused.append(f"{name}: {for_code(code).__name__}{': ' + message if message else ''}")
    return refused


async def ensure_topics(settings: Settings) -> Topics:
    """Create the contract's topics if they are missing (replication factor and min ISR from the
    settings); existing ones are left as they are. A topic the cluster refuses (say, a replication
    factor larger than the brokers it has) raises ``KafkaError`` instead of passing unnoticed."""
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
                topic_configs=topic_config(settings.kafka_replication_factor),
            )
            for name in topics.all()
            if name not in existing
        ]
        if missing:
            try:
                response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                response = None  # another process created them first
            if refused := creation_errors(response):
                raise KafkaError(f"Kafka refused to create topics: {'; '.join(refused)}")
    finally:
        await admin.close()
    return topics


async def describe_groups(
    bootstrap_servers: str, groups: list[str], timeout: float = 10.0
) -> list[tuple[str, str, dict[str, list[int]]]]:
    """(group, member's client id, {topic: partitions}) of every member of ``groups`` now.

    aiokafka 0.14 reads a DescribeGroups v3 answer with the v2 layout and fails ("Buffer underrun"),
    so the request is capped at v2 here, sent through the admin client's private request call."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
    from aiokafka.protocol.admin import DescribeGroupsRequest, DescribeGroupsRequest_v2

    class DescribeGroupsUpToV2(DescribeGroupsRequest):
        def build(self, request_struct_class: Any) -> Any:
            return DescribeGroupsRequest_v2(self._groups)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    found: list[tuple[str, str, dict[str, list[int]]]] = []
    try:
        for wanted in groups:
            coordinator = await admin.find_coordinator(wanted)
            response = await admin._send_request(DescribeGroupsUpToV2([wanted]), coordinator)
            for _error, name, _state, _type, _protocol, members in response.groups:
                for _member, client_id, _host, _metadata, assignment in members:
                    partitions: dict[str, list[int]] = {}
                    if assignment:
                        decoded = ConsumerProtocolMemberAssignment.decode(assignment)
                        partitions = {topic: list(parts) for topic, parts in decoded.assignment}
                    found.append((name, client_id, partitions))
    finally:
        await admin.close()
    return found


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
