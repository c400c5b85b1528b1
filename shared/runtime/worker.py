"""The consume → work → commit loop both workers share, and their small metrics server.

``run_batches`` takes records in batches (``getmany``), hands each batch to the worker's step, and
commits the batch's offsets only after that step returned — i.e. after its outputs are durable
(Kafka acks for the router, a database commit for storage). A step that raises is retried with the
same records and a capped backoff; offsets never move past work that was not done. SIGTERM ends
the loop between batches: the batch in hand is finished and committed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared.contracts.topics import Topics
from shared.runtime import process
from shared.runtime.backoff import Backoff, pause
from shared.runtime.kafka import WORKER_FETCH, ensure_topics, make_consumer, make_producer
from shared.runtime.settings import Settings

log = structlog.get_logger(__name__)

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
Step = Callable[[Batch], Awaitable[None]]
Client = TypeVar("Client", AIOKafkaConsumer, AIOKafkaProducer)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM/SIGINT; the signal also starts the process's exit watchdog."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        process.signalled()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    return stop


def lag_gauge(registry: CollectorRegistry, prefix: str) -> Gauge:
    return Gauge(
        f"{prefix}_consumer_lag", "Records behind the partition's end", ["partition"], registry=registry
    )


class ConsumerBroken(Exception):
    """The consumer's group coordination died: it must be replaced (see ``_poll``)."""


def _own_cancellation() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _poll(consumer: AIOKafkaConsumer, max_records: int) -> Batch:
    """``getmany``. A consumer that stalled past ``max.poll.interval`` leaves its group; when its
    commit then fails, aiokafka (0.14) can end the consumer's coordination task cancelled, and
    from then on every ``getmany`` raises CancelledError at once, in a task nobody cancelled (a
    tight loop, or a consume loop ending quietly). That is ``ConsumerBroken``: ``consume``
    replaces the consumer. The task's own cancellation still propagates."""
    try:
        batch: Batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
    except asyncio.CancelledError:
        if _own_cancellation():
            raise
        raise ConsumerBroken("the consumer's group coordination ended (cancelled)") from None
    return batch


async def _record_lag(consumer: AIOKafkaConsumer, gauge: Gauge) -> None:
    try:
        await _lag(consumer, gauge)
    except asyncio.CancelledError:
        if _own_cancellation():
            raise
        raise ConsumerBroken("the consumer's position could not be read (cancelled)") from None


async def _lag(consumer: AIOKafkaConsumer, gauge: Gauge) -> None:
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        with contextlib.suppress(IllegalStateError):
            gauge.labels(str(tp.partition)).set(max(0, highwater - await consumer.position(tp)))


async def run_batches(
    consumer: AIOKafkaConsumer,
    step: Step,
    stop: asyncio.Event,
    *,
    max_records: int = 500,
    lag: Gauge | None = None,
    name: str = "worker",
) -> None:
    backoff = Backoff(initial=0.2)
    while not stop.is_set():
        batch = await _poll(consumer, max_records)
        if not batch:
            if lag is not None:
                await _record_lag(consumer, lag)
            continue
        while True:  # the same records until the step succeeds: nothing is skipped
            try:
                await step(batch)
                backoff.reset()
                break
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "step failed; retrying the same batch", stage=name, error=repr(exc), retry_in=delay
                )
                await backoff.sleep(delay, stop)
                if stop.is_set():
                    # Stopping during an outage: leave without committing; the records are
                    # re-delivered to whoever consumes next.
                    log.warning("stopping with an unfinished batch; it will be re-delivered", stage=name)
                    return
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions away: their new owner re-reads from the last commit
            # (at-least-once; storage is idempotent).
            log.warning("commit failed; records will be re-delivered", stage=name, error=repr(exc))
        if lag is not None:
            await _record_lag(consumer, lag)


@contextlib.asynccontextmanager
async def metrics_server(
    registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool]
) -> AsyncIterator[None]:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: none)."""
    if port == 0:
        yield
        return

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"status": "ok" if ok else "starting"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=True).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def start_with_retry(factory: Callable[[], Client], what: str, stop: asyncio.Event) -> Client | None:
    """A started aiokafka client, retrying (with a fresh client) while the broker is away;
    None when ``stop`` was set first."""
    backoff = Backoff()
    while not stop.is_set():
        client = factory()
        try:
            await client.start()
            return client
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning(
                "kafka client cannot start yet; retrying", client=what, error=repr(exc), retry_in=delay
            )
            with contextlib.suppress(Exception):
                await client.stop()
            await backoff.sleep(delay, stop)
    return None


async def topics_when_reachable(settings: Settings, stop: asyncio.Event) -> Topics | None:
    """The contract's topics (created if missing), retrying while Kafka is away; None if stopped."""
    while not stop.is_set():
        try:
            return await asyncio.wait_for(ensure_topics(settings), 10)
        except Exception as exc:
            log.warning("kafka not reachable yet; retrying", error=repr(exc))
            await pause(1, stop)
    return None


def run_service(name: str, run: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    """A worker's ``main``: logging → settings → (uvloop) → ``run(settings)`` until it returns.

    Whatever keeps a worker from working is logged and ends the process non-zero: a bad
    configuration (2), a metrics port that cannot be bound or any other error ``run`` raises (1).
    Brokers and databases that are away are not such errors: ``run`` retries them. From SIGTERM
    on, the process ends within ``SHUTDOWN_TIMEOUT_SECONDS`` (shared.runtime.process.ExitWatchdog)."""
    settings = process.service_settings(name)
    if settings is None:
        return process.EXIT_BAD_CONFIGURATION
    service_log = structlog.get_logger(name)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    watchdog = process.ExitWatchdog(name, settings.shutdown_timeout_seconds).install()
    code = process.EXIT_OK
    try:
        asyncio.run(run(settings))
    except SystemExit as exc:
        service_log.error("invalid configuration; exiting", error=str(exc.code))
        code = process.EXIT_BAD_CONFIGURATION
    except Exception as exc:
        service_log.exception("service failed; exiting", error=repr(exc))
        code = process.EXIT_FAILED
    watchdog.finished(code)  # whatever still runs (threads, the interpreter's exit) is bounded
    return code


async def start_clients(
    settings: Settings, source: str, group: str, stop: asyncio.Event, fetch: Mapping[str, Any] = WORKER_FETCH
) -> tuple[AIOKafkaProducer, AIOKafkaConsumer] | None:
    """A worker's producer (its outputs) and its consumer of ``source`` in ``group``, each retried
    while Kafka is away; None when stopped first (whatever did start is stopped again)."""
    producer = await start_with_retry(lambda: make_producer(settings), "producer", stop)
    if producer is None:
        return None
    consumer = await start_with_retry(
        lambda: make_consumer(settings, source, group_id=group, **fetch), "consumer", stop
    )
    if consumer is None:
        await producer.stop()
        return None
    return producer, consumer


@dataclass(frozen=True, slots=True)
class Stage:
    """One consuming stage (the router, the storage worker): what it reads, in which group, how
    much at a time, and where its metrics are served."""

    name: str  # "router" / "storage": the consumer group is <prefix><name>_worker
    source: Callable[[Topics], str]  # the topic it consumes
    batch_max: int
    metrics: CollectorRegistry
    metrics_port: int
    lag: Gauge
    # Consumer settings of its own: by default the hot stages' fetch tuning (kafka.WORKER_FETCH);
    # a stage that is mostly idle (the dead-letter index) keeps aiokafka's longer fetch wait.
    fetch: Mapping[str, Any] = field(default_factory=lambda: WORKER_FETCH)


async def consume(
    settings: Settings,
    stage: Stage,
    stop: asyncio.Event,
    build: Callable[[AIOKafkaProducer, Topics], Step],
    *,
    prepare: Callable[[], Awaitable[bool]] | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> None:
    """A worker's life, the same for every stage: metrics server → topics → ``prepare`` (e.g. the
    router's first platform snapshot; False: stop) → producer and consumer → ``build`` the step
    → :func:`run_batches` until ``stop`` → clients stopped. Everything waits for Kafka while it is
    away and gives up as soon as ``stop`` is set."""
    consumer: AIOKafkaConsumer | None = None

    def assigned() -> bool:
        return ready() and consumer is not None and bool(consumer.assignment())

    async with metrics_server(stage.metrics, settings.metrics_host, stage.metrics_port, assigned):
        topics = await topics_when_reachable(settings, stop)
        if topics is None or (prepare is not None and not await prepare()):
            return
        group = f"{settings.kafka_topic_prefix}{stage.name}_worker"
        clients = await start_clients(settings, stage.source(topics), group, stop, stage.fetch)
        if clients is None:
            return
        producer, consumer = clients
        outputs = Outputs(settings, producer, lambda p: build(p, topics), stop)
        step = outputs.step
        try:
            log.info("consuming", stage=stage.name, source=stage.source(topics), group=group)
            process.settle_heap()
            while not stop.is_set():
                try:
                    await run_batches(
                        consumer, step, stop, max_records=stage.batch_max, lag=stage.lag, name=stage.name
                    )
                except ConsumerBroken as exc:
                    # What it had not committed is re-delivered to whoever holds the partitions next.
                    log.warning("kafka consumer broken; replacing it", stage=stage.name, error=str(exc))
                    await _close_quietly(consumer)
                    fresh = await start_with_retry(
                        lambda: make_consumer(settings, stage.source(topics), group_id=group, **stage.fetch),
                        "consumer",
                        stop,
                    )
                    if fresh is None:
                        return
                    consumer = fresh
        finally:
            log.info("stopping: last batch done and committed", stage=stage.name)
            await consumer.stop()
            await outputs.producer.stop()


class Outputs:
    """A stage's producer and the step built on it; the producer is replaced when a step fails
    with a Kafka error.

    A record an idempotent producer had taken and then gave up (a batch whose partition had no
    leader for ``request_timeout_ms``, ``LeaderNotAvailable`` while a broker restarts) leaves a gap
    in its sequence numbers, after which the broker refuses every later batch of that partition
    (``OutOfOrderSequenceNumber``) for as long as the producer lives: retrying the batch with it
    would never succeed (ingest_api.enqueue does the same for its producer). The failed batch is
    retried with a new producer (a new producer id); what the old one still held is dropped:
    the batch's records are produced again and storage is idempotent."""

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        build: Callable[[AIOKafkaProducer], Step],
        stop: asyncio.Event,
    ) -> None:
        self._settings, self._build, self._stop = settings, build, stop
        self.producer = producer
        self._step = build(producer)

    async def step(self, batch: Batch) -> None:
        try:
            await self._step(batch)
        except KafkaError as exc:
            log.warning("kafka error in a step; replacing the producer", error=repr(exc))
            old = self.producer
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 5)
            fresh = await start_with_retry(lambda: make_producer(self._settings), "producer", self._stop)
            if fresh is not None:
                self.producer, self._step = fresh, self._build(fresh)
            raise


async def _close_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop a broken consumer, bounded; what it raises on the way is of no interest any more."""
    try:
        await asyncio.wait_for(consumer.stop(), 10)
    except (Exception, asyncio.CancelledError):
        if _own_cancellation():
            raise
