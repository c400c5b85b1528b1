"""Produce to ``traces.raw`` and wait for Kafka's acknowledgement, or give up in time with 503.

The producer starts in the background and retries until the broker answers, so the service comes
up (and answers 503) even while Kafka is away. A 202 is only ever sent after an ack
(``acks=all``, idempotent producer: see shared.runtime.kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest_api.metrics import IngestMetrics
from ingest_api.responses import ApiError, Detail
from shared.runtime.kafka import make_producer
from shared.runtime.settings import Settings

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5


def unavailable(reason: str) -> ApiError:
    return ApiError(
        503,
        "SERVICE_UNAVAILABLE",
        "The trace could not be queued right now; retry later",
        [Detail("unavailable", reason, "", "server")],
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class Enqueuer:
    def __init__(self, settings: Settings, topic: str, metrics: IngestMetrics) -> None:
        self._settings = settings
        self.topic = topic
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def ready(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        self._starting = asyncio.create_task(self._start_producer(), name="producer-start")

    async def _start_producer(self) -> None:
        backoff = 0.5
        while not self._closing:
            producer = make_producer(self._settings)
            try:
                await producer.start()
            except asyncio.CancelledError:
                # shutting down while still connecting: close what was half opened
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 5)
                raise
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("kafka producer cannot start yet; retrying", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if self._closing:  # stop() came while it was starting
                await asyncio.wait_for(producer.stop(), 30)
                return
            self._producer = producer
            log.info("kafka producer ready", topic=self.topic)
            return

    async def stop(self) -> None:
        """Flush what is buffered (in-flight requests are still waiting on it), then close."""
        self._closing = True  # see shared.registry.change_feed.ChangeFeed.stop for why a flag too
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.wait([self._starting], timeout=35)
        if self._producer is not None:
            try:
                # bounded: with the broker gone, a flush would otherwise wait for it forever
                await asyncio.wait_for(self._producer.stop(), 30)
            except TimeoutError:
                log.warning(
                    "kafka producer did not flush within 30 s; unacknowledged traces were never answered 202"
                )
            self._producer = None

    async def send(self, key: bytes, value: bytes) -> None:
        producer = self._producer
        if producer is None:
            raise unavailable("Kafka is not reachable yet")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                future = await producer.send(self.topic, value, key=key)
                await future
        except TimeoutError:
            raise unavailable(
                f"Kafka did not acknowledge within {self._settings.produce_timeout_seconds:g}s"
            ) from None
        except KafkaError as exc:
            raise unavailable(f"Kafka refused the write: {type(exc).__name__}") from None
        self._metrics.produce_latency.observe(time.perf_counter() - started)

    async def send_many(self, messages: list[tuple[bytes, bytes]]) -> list[str | None]:
        """Produce all, then wait for every ack within the timeout; per message ``None`` when
        acknowledged, else why not. Only acknowledged messages may be reported as queued."""
        producer = self._producer
        if producer is None:
            return ["Kafka is not reachable yet"] * len(messages)
        started = time.perf_counter()
        futures: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                for key, value in messages:
                    futures.append(await producer.send(self.topic, value, key=key))
                await asyncio.wait(futures)
        except TimeoutError:
            pass
        except KafkaError as exc:
            log.warning("kafka refused part of a batch", error=repr(exc))
        self._metrics.produce_latency.observe(time.perf_counter() - started)
        outcome: list[str | None] = []
        for future in futures:
            if not future.done():
                outcome.append(
                    f"Kafka did not acknowledge within {self._settings.produce_timeout_seconds:g}s"
                )
            elif future.cancelled() or future.exception() is not None:
                outcome.append("Kafka refused the write")
            else:
                outcome.append(None)
        outcome.extend(["Kafka could not take the write in time"] * (len(messages) - len(futures)))
        return outcome
