"""Faults on the local Kafka cluster (``dev up --brokers N``): who leads which partition, kill -9
of a broker, its restart, and waiting until every replica is in sync again. Used by
``bench/chaos.py`` and ``tests/faults/test_cluster.py``; every wait is bounded."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient

from shared.devstack import processes
from shared.devstack.kafka_broker import Broker


@dataclass(frozen=True, slots=True)
class PartitionState:
    leader: int  # -1: none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, PartitionState]:
    """Each partition of ``topic``: its leader, replicas and in-sync replicas, as the metadata says."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        (described,) = await asyncio.wait_for(admin.describe_topics([topic]), timeout)
    finally:
        await admin.close()
    return {
        p["partition"]: PartitionState(p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
        for p in described["partitions"]
    }


def busiest_leader(state: dict[int, PartitionState]) -> int:
    """The broker that leads most partitions (the lowest id among equals)."""
    counts = Counter(p.leader for p in state.values() if p.leader >= 0)
    return min(counts, key=lambda node: (-counts[node], node))


def below_min_isr(state: dict[int, PartitionState], min_isr: int) -> list[int]:
    return sorted(n for n, p in state.items() if len(p.isr) < min_isr)


def fully_in_sync(state: dict[int, PartitionState]) -> bool:
    return bool(state) and all(p.leader >= 0 and set(p.isr) == set(p.replicas) for p in state.values())


def node(nodes: list[Broker], node_id: int) -> Broker:
    (found,) = [n for n in nodes if n.node_id == node_id and n.roles != "controller"]
    return found


def kill9(broker: Broker) -> int:
    """``kill -9`` of a broker's process group; its pid."""
    pid = broker.running()
    assert pid, f"broker {broker.node_id} is not running"
    processes.stop(pid, sig=signal.SIGKILL, timeout=10)
    return pid


async def wait_until(
    bootstrap: str,
    topic: str,
    predicate: Callable[[dict[int, PartitionState]], bool],
    timeout: float,
    what: str,
) -> tuple[dict[int, PartitionState], float]:
    """Poll the topic's metadata until ``predicate(state)``; (that state, seconds it took).
    AssertionError with the last state seen after ``timeout``."""
    started = time.monotonic()
    last: dict[int, PartitionState] | str = "no answer yet"
    while time.monotonic() - started < timeout:
        try:
            state = await partitions(bootstrap, topic, timeout=5)
        except Exception as exc:  # a broker that is away answers nothing; ask again
            last = repr(exc)
        else:
            last = state
            if predicate(state):
                return state, time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s; last seen {last}")


async def group_members(bootstrap: str, group: str) -> dict[str, list[int]]:
    """Each member (client id) of a consumer group and the partitions it holds now."""
    from shared.runtime.kafka import describe_groups

    found = await describe_groups(bootstrap, [group], timeout=5)
    return {client: sorted(p for parts in held.values() for p in parts) for _, client, held in found}


async def wait_for_group(
    bootstrap: str, group: str, members: int, partitions: int, timeout: float
) -> tuple[dict[str, list[int]], float]:
    """Wait until ``group`` has ``members`` members holding all ``partitions`` between them (a
    rebalance finished); (who holds what, seconds it took)."""
    started = time.monotonic()
    last: dict[str, list[int]] | str = "no answer yet"
    while time.monotonic() - started < timeout:
        try:
            held = await group_members(bootstrap, group)
        except Exception as exc:  # the coordinator moving: ask again
            last = repr(exc)
        else:
            last = held
            covered = sorted(p for parts in held.values() for p in parts)
            if len(held) == members and covered == list(range(partitions)):
                return held, time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"group {group}: not {members} members over {partitions} partitions; last {last}")
