"""The Pipeline page's figures: each stage's counters from the services' ``/metrics`` (rates
between two reads), each consumer group's lag from Kafka itself (end offsets - committed offsets),
and whether the counters reconcile (``shared.devstack.reconcile``'s checks, the ones the
end-to-end test and ``make chaos`` hold the pipeline to)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
import psycopg_pool
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from shared.contracts.topics import Topics
from shared.devstack.reconcile import COUNTERS, counter_checks
from shared.runtime.kafka import reader
from shared.runtime.settings import Settings

log = structlog.get_logger("console")

RATE_WINDOW_SECONDS = 30.0  # rates are over the samples of about this long
CACHE_SECONDS = 1.0  # several open pages share one read a second
SCRAPE_TIMEOUT_SECONDS = 2.0

# (what the page calls it, the counter labels of reconcile.COUNTERS it adds up)
RATES = (
    ("accepted", ("ingest accepted",)),
    ("replayed", ("dlq replays since the router started",)),
    ("routed", ("router routed",)),
    ("dead-lettered", ("router dead-lettered", "storage dead-lettered")),
    ("stored", ("storage stored", "storage replaced")),
)


def metrics_urls(settings: Settings) -> list[str]:
    if settings.console_metrics_urls.strip():
        return [u.strip() for u in settings.console_metrics_urls.split(",") if u.strip()]
    return [
        f"http://127.0.0.1:{port}/metrics"
        for port in (settings.ingest_port, settings.router_metrics_port, settings.storage_metrics_port)
        if port
    ]


def sum_samples(texts: list[str]) -> dict[str, float]:
    """Every sample name's total over all labels and all the texts (pure)."""
    totals: dict[str, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


REPLAYED = "dlq replays since the router started"
ROUTER_STARTED = "router_consumed_created"  # when the router's counters began (Unix seconds)

REPLAYS_SINCE = """
SELECT count(*) FROM dlq_replays WHERE topic = %s AND replayed_at >= to_timestamp(%s)
"""
# `mibo-ingest dlq replay` (and the console's replay) produce to traces.raw behind the ingest API's
# back: the router counts them, the ingest API does not. dlq_replays records each one.


def counters(totals: dict[str, float]) -> dict[str, float]:
    return {label: totals.get(name, 0.0) for label, _stage, name in COUNTERS}


def checks_with_replays(values: dict[str, float], replayed: float) -> dict[str, bool]:
    """reconcile's checks, with the records replayed into traces.raw counted as accepted (pure)."""
    return counter_checks({**values, "ingest accepted": values["ingest accepted"] + replayed})


def rates(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float | None]:
    """Per second, between the oldest and newest sample (None until there are two). A counter
    that went down (a service restarted) counts from zero."""
    if len(samples) < 2:
        return {name: None for name, _ in RATES}
    (t0, first), (t1, last) = samples[0], samples[-1]
    span = max(t1 - t0, 1e-6)
    out: dict[str, float | None] = {}
    for name, labels in RATES:
        delta = 0.0
        for label in labels:
            now, then = last.get(label, 0.0), first.get(label, 0.0)
            delta += now - then if now >= then else now
        out[name] = delta / span
    return out


@dataclass
class Stage:
    name: str
    topic: str
    group: str
    lag: int | None = None


@dataclass
class Snapshot:
    urls: dict[str, bool]  # metrics URL -> answered
    counters: dict[str, float]
    rates: dict[str, float | None]
    checks: dict[str, bool] | None  # None when a service did not answer
    stages: list[Stage]
    kafka_error: str = ""
    taken_at: float = field(default_factory=time.time)


def stages_of(settings: Settings) -> list[Stage]:
    topics = Topics.with_prefix(settings.kafka_topic_prefix)
    prefix = settings.kafka_topic_prefix
    return [
        Stage("router", topics.raw, f"{prefix}router_worker"),
        Stage("storage", topics.routed, f"{prefix}storage_worker"),
        Stage("dead-letter index", topics.dlq, f"{prefix}dlq_index_worker"),
    ]


class PipelineProbe:
    """Reads the figures when asked, at most once a second, keeping the last samples for rates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls = metrics_urls(settings)
        self.samples: deque[tuple[float, dict[str, float]]] = deque()
        self._last: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def snapshot(self, pool: psycopg_pool.AsyncConnectionPool) -> Snapshot:
        async with self._lock:
            if self._last is not None and time.time() - self._last.taken_at < CACHE_SECONDS:
                return self._last
            self._last = await self._read(pool)
            return self._last

    async def _replays_since(self, pool: psycopg_pool.AsyncConnectionPool, started: float) -> float:
        topic = Topics.with_prefix(self.settings.kafka_topic_prefix).dlq
        async with pool.connection(timeout=5) as conn:
            cur = await conn.execute(REPLAYS_SINCE, (topic, started))
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def _read(self, pool: psycopg_pool.AsyncConnectionPool) -> Snapshot:
        answered: dict[str, bool] = {}
        texts: list[str] = []
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for url in self.urls:
                try:
                    async with http.get(url) as resp:
                        if resp.status != 200:
                            raise aiohttp.ClientError(f"HTTP {resp.status}")
                        texts.append(await resp.text())
                        answered[url] = True
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    answered[url] = False
        now = time.monotonic()
        totals = sum_samples(texts)
        values = counters(totals)
        replayed = 0.0
        if ROUTER_STARTED in totals:
            with contextlib.suppress(psycopg.Error, psycopg_pool.PoolTimeout):
                replayed = await self._replays_since(pool, totals[ROUTER_STARTED])
        values[REPLAYED] = replayed
        self.samples.append((now, values))
        while len(self.samples) > 2 and self.samples[1][0] < now - RATE_WINDOW_SECONDS:
            self.samples.popleft()
        stages = stages_of(self.settings)
        kafka_error = ""
        try:
            await asyncio.wait_for(self._lags(stages), 5)
        except Exception as exc:  # Kafka away: the page says so, and the next read tries again
            kafka_error = f"Kafka did not answer ({type(exc).__name__})"
            await self.close()
        return Snapshot(
            urls=answered,
            counters=values,
            rates=rates(list(self.samples)),
            checks=checks_with_replays(values, replayed) if answered and all(answered.values()) else None,
            stages=stages,
            kafka_error=kafka_error,
        )

    async def _lags(self, stages: list[Stage]) -> None:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers)
            await self._admin.start()
        if self._consumer is None:
            self._consumer = reader(self.settings.kafka_bootstrap_servers)
            await self._consumer.start()
        topics = await self._admin.describe_topics([s.topic for s in stages])
        partitions: dict[str, list[TopicPartition]] = {
            t["topic"]: [TopicPartition(t["topic"], p["partition"]) for p in t.get("partitions", [])]
            for t in topics
        }
        every = [tp for tps in partitions.values() for tp in tps]
        ends = await self._consumer.end_offsets(every) if every else {}
        for stage in stages:
            committed = await self._admin.list_consumer_group_offsets(stage.group)
            lag = 0
            for tp in partitions.get(stage.topic, []):
                offset = committed.get(tp)
                done = offset.offset if offset is not None and offset.offset >= 0 else 0
                lag += max(0, ends.get(tp, 0) - done)
            stage.lag = lag

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "services": [{"url": url, "up": up} for url, up in snap.urls.items()],
        "counters": snap.counters,
        "rates": snap.rates,
        "checks": None if snap.checks is None else [{"rule": k, "ok": v} for k, v in snap.checks.items()],
        "reconciles": None if snap.checks is None else all(snap.checks.values()),
        "stages": [{"name": s.name, "topic": s.topic, "group": s.group, "lag": s.lag} for s in snap.stages],
        "kafkaError": snap.kafka_error,
    }
