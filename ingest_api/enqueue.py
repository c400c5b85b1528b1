"""Produce to ``traces.raw`` and wait for Kafka's acknowledgement — or answer 503, and then the
trace is never stored.

- **202 only after an ack** (``acks=all``, idempotent producer: see shared.runtime.kafka).
- **A 503 means "not stored".** A record handed to the producer but not acknowledged within
  ``PRODUCE_TIMEOUT_SECONDS`` stays in the producer's buffer (aiokafka retries it until the broker
  takes it) and may reach the broker later. So before answering 503 its trace id (the envelope's
  ``trace_id``, read back from the record itself) is cancelled in PostgreSQL
  (``shared.db.cancellations.cancel``), and the storage worker never stores a cancelled id. When
  ``cancel`` finds the trace stored already (the ack was merely late), it is answered as queued
  after all. When PostgreSQL cannot be reached either, the answer is still 503 — never a 202
  without an ack or a "stored" — logged and counted (``ingest_unfenced_503_total``): such a
  trace is stored if its record reaches Kafka.
- **Broker health** (``BrokerHealth``): down when a send times out or fails for want of a
  connection, or when the probe fails — a metadata request every ``PROBE_INTERVAL_SECONDS``, made
  only when no send proved the broker reachable meanwhile; up when a send or a probe succeeds.
  While down nothing is produced: 503 at once, with ``Retry-After``, so a client's retry budget is
  not spent on one attempt (an OpenTelemetry exporter has 10 s), and ``/readyz`` says not ready.
- **Dropping what was answered 503.** When the broker stays unreachable for longer than the
  produce timeout and no request waits on the producer, whatever its buffer holds belongs to
  traces already answered 503: the producer is replaced, its buffer discarded (``discard``), so
  those records usually never reach the broker. The fence is what guarantees "not stored"; this
  only spares the pipeline late deliveries it would refuse.
- **A producer that lost a record is replaced.** The ingest producer's ``request_timeout_ms`` is
  the produce timeout, so aiokafka also gives up, by itself, a batch whose partition has had no
  leader that long (a broker shutting down). That leaves a gap in an idempotent producer's
  sequence numbers, after which the broker refuses every later batch of the partition
  (``OutOfOrderSequenceNumber``) for as long as the producer lives: so a producer any of whose
  taken records failed is replaced at once (``_record_failed``).
- The producer starts in the background and retries until the broker answers, so the service
  comes up (and answers 503) even while Kafka is away.
- **Group commit.** Requests do not produce one by one: their records queue up, and one flush at
  a time hands them to the producer — the partition of each key computed once by Kafka's own rule
  (``shared.runtime.partition``), one ready batch per partition (``create_batch``/``send_batch``)
  — then waits for those batches' acknowledgements; what queued meanwhile is the next flush. An
  idle service flushes at once (after the current loop iteration: requests parsed together share
  it); under load each produce request carries everything that arrived during the previous one's
  round trip. Each request is still answered only after its own records were acknowledged. The
  deadline is one timer per flush (its oldest request's ``began`` + the produce timeout): it cancels
  the flush — a record not handed over by then never will be, as when ``producer.send`` is
  cancelled — and every request of the flush looks at what it has. A flush waits at most
  ``GROUP_WAIT_SECONDS`` for its acknowledgements before the next one starts anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from psycopg_pool import AsyncConnectionPool

from ingest_api.metrics import IngestMetrics
from ingest_api.responses import ApiError, Detail
from shared.db.cancellations import cancel
from shared.runtime.backoff import Backoff
from shared.runtime.kafka import make_producer
from shared.runtime.partition import key_partitioner, partition_for
from shared.runtime.settings import Settings

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of 503s for other causes than Kafka (ingest_api.trace_read: the database)."""
KAFKA_RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of a 503 for want of Kafka: the broker's state is re-checked every second, and
a retry while it is still away costs nothing (answered at once)."""
PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0
CANCEL_TIMEOUT_SECONDS = 3.0
"""Bound on cancelling in PostgreSQL (pool wait included), on top of the produce timeout."""
STOP_TIMEOUT_SECONDS = 30.0
GROUP_WAIT_SECONDS = 0.05
"""Longest a flush waits for its acknowledgements before the next one starts anyway: with a
broker that stopped answering, the records of later requests are still handed over (and, answered
503, cancelled: the fence covers them) instead of waiting behind the first flush."""

BROKER_UNREACHABLE: tuple[type[KafkaError], ...] = (
    KafkaConnectionError,
    NodeNotReadyError,
    RequestTimedOutError,
    KafkaTimeoutError,
)
"""Failures that say the broker cannot be reached (rather than that it refused this record)."""


def unavailable(reason: str, retry_after: int = KAFKA_RETRY_AFTER_SECONDS) -> ApiError:
    return ApiError(
        503,
        "SERVICE_UNAVAILABLE",
        "The trace could not be queued right now; retry later",
        [Detail("unavailable", reason, "", "server")],
        headers={"Retry-After": str(retry_after)},
    )


class _Identity(msgspec.Struct):
    trace_id: uuid.UUID


_identity = msgspec.json.Decoder(_Identity)


def trace_id_of(value: bytes) -> uuid.UUID:
    """The ``trace_id`` of an encoded ``RawEnvelope``: the id the storage worker's fence checks."""
    return _identity.decode(value).trace_id


@dataclass
class BrokerHealth:
    """What the ingest API believes of the broker, from evidence: sends and probes (pure: the
    caller passes the clock's readings).

    Each piece of evidence is an attempt that began at some time and then succeeded or failed.
    A success marks the broker up. A failure marks it down — unless something succeeded after
    that attempt began: a send that was waiting on a broker which has answered since says
    nothing about it now (a slow send among quick ones, a send from before a restart)."""

    up: bool = False
    last_success: float = -math.inf
    down_since: float = -math.inf

    def succeeded(self, now: float) -> bool:
        """An acknowledgement or an answered probe; True when this marks the broker up."""
        self.last_success = max(self.last_success, now)
        if self.up:
            return False
        self.up = True
        return True

    def failed(self, began: float, now: float) -> bool:
        """An attempt that began at ``began`` failed for want of the broker (seen at ``now``);
        True when this marks the broker down."""
        if not self.up or began < self.last_success:
            return False
        self.up = False
        self.down_since = now
        return True

    def down_for(self, now: float) -> float:
        """How long the broker has been known unreachable (0 while up, and before it ever was)."""
        return 0.0 if self.up or self.down_since == -math.inf else now - self.down_since

    def probe_due(self, now: float, interval: float) -> bool:
        """Probe while down, and while up when no success is more recent than ``interval``."""
        return not self.up or now - self.last_success >= interval


class Discarded(KafkaError):
    """What the records of a discarded producer fail with: they were never sent."""


async def discard(producer: AIOKafkaProducer, timeout: float) -> None:
    """Close ``producer`` without delivering what its buffer still holds.

    aiokafka has no call for this: an idempotent producer never expires a record (it retries
    until the broker takes it; ``request_timeout_ms`` does not change that) and ``stop()`` flushes.
    So, with two of aiokafka's internals (as of 0.14; without them the producer is stopped the
    ordinary way, bounded): stop its sender task first — the produce requests under way end by
    themselves, at once with the broker gone, else within ``request_timeout_ms`` — then fail every
    record still buffered (``Discarded``), then ``stop()``, which has nothing left to flush."""
    sender = getattr(producer, "_sender", None)
    fail_all = getattr(getattr(producer, "_message_accumulator", None), "fail_all", None)
    task = getattr(sender, "sender_task", None)
    if isinstance(task, asyncio.Task) and callable(fail_all):
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
        if task.done():
            fail_all(Discarded("discarded unsent: its trace was answered 503"))
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except TimeoutError:
        log.warning("kafka producer did not close in time; abandoning it", timeout=timeout)


async def cancel_unacknowledged(
    pool: AsyncConnectionPool,
    values: list[bytes],
    metrics: IngestMetrics,
    timeout: float = CANCEL_TIMEOUT_SECONDS,
) -> list[bool]:
    """Cancel the traces of ``values`` (encoded envelopes handed to the producer, not
    acknowledged) before they are answered 503; per value, whether it was found stored already
    (the ack was merely late: answer it as queued after all). When nothing could be cancelled,
    none was found: they are answered 503 all the same, and counted as unfenced."""
    try:
        ids = [trace_id_of(value) for value in values]
        async with asyncio.timeout(timeout):
            async with pool.connection(timeout=timeout) as conn:
                stored = await cancel(conn, ids)
    except Exception as exc:  # whatever it was, the answer stays 503: never a 202 without an ack
        metrics.unfenced_503.inc(len(values))
        log.error(
            "trace cancellation failed: answered 503 unfenced, may still be stored",
            traces=len(values),
            error=repr(exc),
        )
        return [False] * len(values)
    metrics.cancelled.inc(len(ids) - len(stored))
    metrics.cancel_found_stored.inc(len(stored))
    if stored:
        log.info("late acknowledgement: traces found stored, answered as queued", traces=len(stored))
    return [trace_id in stored for trace_id in ids]


class _Flush:
    """The calls whose messages one flush hands to the producer, and its one deadline: the oldest
    call's ``began`` plus the produce timeout (a timer per flush, not a timeout per request)."""

    __slots__ = ("calls", "pending", "timer")

    def __init__(self, calls: list[_Call]) -> None:
        self.calls = calls
        self.pending = len(calls)
        self.timer: asyncio.TimerHandle | None = None

    def call_done(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and self.timer is not None:
            self.timer.cancel()

    def expire(self, task: asyncio.Task[None]) -> None:
        """The deadline: whatever is not handed over yet never will be (the flush is cancelled —
        like cancelling ``producer.send``), and every caller looks at what it has."""
        task.cancel()
        for call in self.calls:
            call.answer()


class _Call:
    """One ``send_many``: per message, the future of the batch it was handed over in, or the
    error that refused it; and the one future its caller waits on (set when every message was
    acknowledged, failed or refused, or at the deadline)."""

    __slots__ = ("began", "flush", "future", "futures", "refused", "remaining")

    def __init__(self, count: int, began: float) -> None:
        self.began = began
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures: list[asyncio.Future[Any] | None] = [None] * count
        self.refused: list[KafkaError | None] = [None] * count
        self.remaining = count
        self.flush: _Flush | None = None

    def settle(self, count: int = 1) -> None:
        self.remaining -= count
        if self.remaining <= 0:
            self.answer()

    def refuse(self, index: int, error: KafkaError) -> None:
        self.refused[index] = error
        self.settle()

    def answer(self) -> None:
        if not self.future.done():
            self.future.set_result(None)
            if self.flush is not None:
                self.flush.call_done()


_Item = tuple[bytes, bytes, _Call, int]  # key, value, its call, its index in the call


def _delivered(items: list[_Item], _: asyncio.Future[Any]) -> None:
    """A batch was acknowledged (or failed): its messages are settled."""
    for item in items:
        item[2].settle()


class Enqueuer:
    def __init__(
        self, settings: Settings, topic: str, metrics: IngestMetrics, pool: AsyncConnectionPool
    ) -> None:
        self._settings = settings
        self.topic = topic
        self._metrics = metrics
        self._pool = pool
        self._timeout = settings.produce_timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._health = BrokerHealth()
        self._in_flight = 0  # requests between handing records to the producer and their answer
        # Futures of records whose trace was answered 503 and that are still in the buffer.
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._queue: list[_Item] = []  # messages waiting for the next flush
        self._flushing: asyncio.Task[None] | None = None
        self._flush_due: asyncio.Handle | None = None
        metrics.watch_kafka(lambda: 1.0 if self.ready else 0.0)

    @property
    def ready(self) -> bool:
        """A producer is running and the broker is believed reachable."""
        return self._producer is not None and self._health.up

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._spawn(self._start_producer(), "producer-start")
        self._spawn(self._watch(), "broker-watch")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_producer(self) -> None:
        # capped at 2 s: once the broker is back, 503s should stop within a couple of seconds
        backoff = Backoff(cap=2.0)
        while not self._closing:
            # Requests to a broker that stopped answering (but kept its connection) give up — and
            # reconnect — as soon as the API stops waiting for them.
            producer = make_producer(
                self._settings,
                request_timeout_ms=max(1000, int(self._timeout * 1000)),
                partitioner=key_partitioner,
            )
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
                delay = backoff.next_delay()
                log.warning("kafka producer cannot start yet; retrying", error=str(exc), retry_in=delay)
                await backoff.sleep(delay)
                continue
            if self._closing:  # stop() came while it was starting
                await asyncio.wait_for(producer.stop(), STOP_TIMEOUT_SECONDS)
                return
            self._producer = producer
            self._mark_up("producer started")
            log.info("kafka producer ready", topic=self.topic)
            return

    async def stop(self) -> None:
        """Deliver what is buffered (bounded: with the broker gone it would wait forever), then
        close — unless what is buffered was answered 503 already (or the broker is away): then it
        is discarded, not delivered."""
        self._closing = True  # see shared.registry.change_feed.ChangeFeed.stop for why a flag too
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS + 5)
        if self._flushing is not None:  # requests are answered by now; let it hand over the rest
            await asyncio.wait([self._flushing], timeout=self._timeout)
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._abandoned or not self._health.up:
            await discard(producer, STOP_TIMEOUT_SECONDS)
            return
        try:
            await asyncio.wait_for(producer.stop(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning(
                "kafka producer did not flush within 30 s; unacknowledged traces were never answered 202"
            )

    # -- broker health ---------------------------------------------------------------------------
    def _mark_up(self, evidence: str) -> None:
        if self._health.succeeded(time.monotonic()):
            log.info("kafka reachable", evidence=evidence)

    def _mark_down(self, began: float, evidence: str) -> None:
        if self._health.failed(began, time.monotonic()):
            log.warning("kafka unreachable: answering 503 at once until it is back", evidence=evidence)

    async def _watch(self) -> None:
        """Probe the broker when due. Once it has been away for longer than the produce timeout
        (an outage, not a blip: a broker that comes back at once takes the records, and the fence
        refuses them), and nobody waits on the producer, replace the producer: its buffer holds
        only records of traces answered 503."""
        while not self._closing:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            producer = self._producer
            if producer is None or not self._health.probe_due(time.monotonic(), PROBE_INTERVAL_SECONDS):
                continue
            began = time.monotonic()
            if await self._probe(producer):
                self._mark_up("probe")
                continue
            self._mark_down(began, "probe")
            if (
                self._health.down_for(time.monotonic()) >= self._timeout  # an outage, not a blip
                and self._in_flight == 0
                and self._abandoned
                and self._producer is producer
                and not self._closing
            ):
                self._retire(producer, "outage", abandoned_records=len(self._abandoned))

    def _retire(self, producer: AIOKafkaProducer, why: str, **context: object) -> None:
        """Replace ``producer``: from now on sends answer 503 at once without it, its buffer is
        discarded (never delivered) and a new producer — a new idempotent producer id — starts."""
        if self._producer is not producer or self._closing:
            return  # retired already, or shutting down (stop() closes it)
        self._producer = None
        self._abandoned = set()  # they go with it (each fails Discarded, or never resolves)
        log.warning("kafka producer replaced; its unsent records discarded", why=why, **context)
        self._spawn(self._replace(producer), "producer-replace")

    async def _replace(self, producer: AIOKafkaProducer) -> None:
        await discard(producer, 2 * self._timeout + 1)
        await self._start_producer()

    @staticmethod
    async def _probe(producer: AIOKafkaProducer) -> bool:
        """A metadata round trip through the producer's own client (its connections, its view)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                return bool(await producer.client.force_metadata_update())
        except TimeoutError:
            return False

    # -- producing -------------------------------------------------------------------------------
    async def send(self, key: bytes, value: bytes) -> None:
        """Produce one record (an encoded ``RawEnvelope``) and wait for its acknowledgement;
        ``ApiError`` 503 unless it was acknowledged (or, after a late ack, found stored)."""
        (failure,) = await self.send_many([(key, value)])
        if failure is not None:
            raise unavailable(failure)

    async def send_many(self, messages: list[tuple[bytes, bytes]]) -> list[str | None]:
        """Produce all (encoded ``RawEnvelope`` values), then wait for every ack within the
        timeout; per message ``None`` when acknowledged (or found stored), else why not. A
        message that is not ``None`` will not be stored: only those may be reported failed, and
        only acknowledged ones as queued."""
        if not messages:
            return []
        producer = self._producer
        if producer is None or not self._health.up:
            self._metrics.fast_503.inc(len(messages))
            reason = "Kafka is not reachable yet" if producer is None else "Kafka is unreachable right now"
            return [reason] * len(messages)
        self._in_flight += 1
        try:
            call = _Call(len(messages), time.monotonic())
            self._coalesce(messages, call)
            await call.future
            return await self._outcome(producer, messages, call)
        finally:
            self._in_flight -= 1

    # -- coalescing ------------------------------------------------------------------------------
    def _coalesce(self, messages: list[tuple[bytes, bytes]], call: _Call) -> None:
        """Queue ``messages`` for the next flush: after this loop iteration when none is under way,
        else as soon as the one under way is acknowledged."""
        queue = self._queue
        for index, (key, value) in enumerate(messages):
            queue.append((key, value, call, index))
        if self._flushing is None and self._flush_due is None:
            # after this loop iteration: every request that arrived in it shares the flush
            self._flush_due = asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_due = None
        items, self._queue = self._queue, []
        calls = {id(item[2]): item[2] for item in items}
        flush = _Flush(list(calls.values()))
        oldest = min(call.began for call in flush.calls)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._flush(items), name="produce-flush")
        self._flushing = task
        flush.timer = loop.call_at(
            loop.time() + max(0.0, oldest + self._timeout - time.monotonic()), flush.expire, task
        )
        for call in flush.calls:
            call.flush = flush
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing = None
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("produce flush failed", error=repr(error))
        if self._queue and not self._closing and self._flush_due is None:
            self._start_flush()

    async def _flush(self, items: list[_Item]) -> None:
        """Hand ``items`` to the producer as one ready batch per partition (the partition of each
        key computed here, by Kafka's rule: shared.runtime.partition), then wait for their
        acknowledgements. Items are marked handed over (their batch's future) or refused (the
        producer's error) as it goes; when the deadline cancels this task, the rest was never
        handed over."""
        producer = self._producer
        if producer is None:  # retired meanwhile: nothing handed over, the callers answer 503
            for _, _, call, _ in items:
                call.settle()
            return
        try:
            partitions = sorted(await producer.partitions_for(self.topic))
        except KafkaError as exc:
            for _, _, call, index in items:
                call.refuse(index, exc)
            return
        count = len(partitions)
        groups: dict[int, list[_Item]] = {}
        handed: list[asyncio.Future[Any]] = []
        for item in items:
            groups.setdefault(partitions[partition_for(item[0], count)], []).append(item)
        for partition, group in groups.items():
            start = 0
            while start < len(group):
                builder = producer.create_batch()
                end = start
                while end < len(group):
                    key, value = group[end][0], group[end][1]
                    if builder.append(timestamp=None, key=key, value=value) is None:
                        break  # full (the first record always fits an empty batch)
                    end += 1
                batch = group[start:end]
                start = end
                builder.close()  # complete: ready to send at once, no linger
                try:
                    future = await producer.send_batch(builder, self.topic, partition=partition)
                except KafkaError as exc:  # never handed over
                    for _, _, call, index in batch:
                        call.refuse(index, exc)
                    continue
                for _, _, call, index in batch:
                    call.futures[index] = future
                future.add_done_callback(functools.partial(_delivered, batch))
                handed.append(future)
        if handed:  # the next flush starts once these are acknowledged: it takes all that came meanwhile
            await asyncio.wait(handed, timeout=GROUP_WAIT_SECONDS)

    async def _outcome(
        self, producer: AIOKafkaProducer, messages: list[tuple[bytes, bytes]], call: _Call
    ) -> list[str | None]:
        began, futures, refused = call.began, call.futures, call.refused
        outcome: list[str | None] = []
        to_cancel: list[int] = []
        broker_failure = False
        for i, future in enumerate(futures):
            if future is None:  # never handed to the producer: nothing to cancel
                refusal = refused[i]
                outcome.append(
                    f"Kafka refused the write: {type(refusal).__name__}"
                    if refusal is not None
                    else "Kafka could not take the write in time"
                )
                broker_failure |= refusal is None or isinstance(refusal, BROKER_UNREACHABLE)
                self._metrics.unproduced_503.inc()
                continue
            if not future.done():
                outcome.append(f"Kafka did not acknowledge within {self._timeout:g}s")
                broker_failure = True
            elif future.cancelled():
                outcome.append("Kafka refused the write: cancelled")
            elif (error := future.exception()) is not None:
                outcome.append(f"Kafka refused the write: {type(error).__name__}")
                broker_failure |= isinstance(error, BROKER_UNREACHABLE)
                self._record_failed(producer, error)
            else:
                outcome.append(None)
                continue
            to_cancel.append(i)
        if not to_cancel and not broker_failure:  # the common case: every message acknowledged
            self._metrics.produce_latency.observe(time.monotonic() - began)
            self._mark_up("ack")
            return outcome
        if any(o is None for o in outcome):
            self._metrics.produce_latency.observe(time.monotonic() - began)
            self._mark_up("ack")
        if broker_failure:
            self._mark_down(began, "send")
        if to_cancel:
            found = await cancel_unacknowledged(
                self._pool, [messages[i][1] for i in to_cancel], self._metrics
            )
            for i, stored in zip(to_cancel, found, strict=True):
                if stored:
                    outcome[i] = None
                future = futures[i]
                assert future is not None
                self._follow(producer, future, answered_503=not stored)
        return outcome

    def _record_failed(self, producer: AIOKafkaProducer, error: BaseException) -> None:
        """A record the producer had taken failed. aiokafka gave a sequence number to its batch
        and then gave the batch up (a batch whose partition had no leader for
        ``request_timeout_ms`` expires; a refused one fails): an idempotent producer's sequence
        now has a gap, and the broker would refuse every later batch of that partition
        (``OutOfOrderSequenceNumber``) for as long as the producer lives. So it is replaced."""
        if not isinstance(error, Discarded):
            self._retire(producer, "a record it had taken failed", error=type(error).__name__)

    def _follow(self, producer: AIOKafkaProducer, future: asyncio.Future[Any], *, answered_503: bool) -> None:
        """Watch a record whose request was answered without its ack: count what becomes of it,
        keep the buffer's abandoned records known (for ``_watch``), retrieve its exception."""
        if answered_503 and not future.done():
            self._abandoned.add(future)
        future.add_done_callback(functools.partial(self._settled, producer, answered_503=answered_503))

    def _settled(
        self, producer: AIOKafkaProducer, future: asyncio.Future[Any], *, answered_503: bool
    ) -> None:
        self._abandoned.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._mark_up("late ack")  # the broker answered: it is reachable
            if answered_503:
                self._metrics.late_acks.inc()
        elif isinstance(exc, Discarded):
            self._metrics.discarded.inc()
        else:
            self._record_failed(producer, exc)
