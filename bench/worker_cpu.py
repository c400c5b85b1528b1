"""CPU per trace of a consuming process (a worker, or a bare loop), measured from outside.

The harness both worker benchmarks share (bench/router.py, bench/storage.py): a process that
consumes a topic in a consumer group is started, warmed up with a few records, then its CPU
(``/proc/<pid>/stat``, bench/procstat.py) is read before and after ``count`` records are produced
to its topic and its group has committed all of them. Records are produced while it runs, as in
the pipeline; ``rate`` paces them (0: as fast as the bench's producer goes).

``run_consumer`` returns CPU ms per record for the process and for any extra pids (its
PostgreSQL backend), the seconds from the first record produced to the last one committed, and,
with ``profile``, a py-spy profile of the process recorded during the run (py-spy's sampling costs
the process CPU, so figures from a profiled run are marked as such by the callers).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.procstat import CpuMeter
from shared.devstack.pipeline import service_env
from shared.runtime.kafka import make_producer
from shared.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
Values = Sequence[tuple[bytes, bytes]]  # (key, value)


@dataclass
class ConsumerRun:
    name: str
    records: int
    seconds: float
    cpu_ms: dict[str, float]  # name -> CPU ms per record

    def row(self) -> dict[str, object]:
        return {"records": self.records, "seconds": self.seconds, "rate": self.records / self.seconds,
                "cpu_ms_per_record": self.cpu_ms}  # fmt: skip


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    """Records of ``topic`` the group has committed (the sum of its committed offsets)."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except KafkaError:  # the group has no coordinator yet: it has not joined
        return 0
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def wait_committed(
    admin: AIOKafkaAdminClient, group: str, topic: str, target: int, proc: subprocess.Popen[bytes],
    timeout: float = 600,
) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while await committed(admin, group, topic) < target:
        if proc.poll() is not None:
            raise SystemExit(f"the consumer exited with {proc.returncode} before committing {target} records")
        if time.monotonic() > deadline:
            raise SystemExit(f"{group} did not commit {target} records of {topic} in {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def produce(producer: AIOKafkaProducer, topic: str, values: Values, rate: float) -> None:
    """Every value, acknowledged; ``rate`` > 0 paces them in 10 ms slices."""
    chunk = max(1, int(rate / 100)) if rate > 0 else 2000
    started = time.perf_counter()
    for n, i in enumerate(range(0, len(values), chunk)):
        futures = [await producer.send(topic, value, key=key) for key, value in values[i : i + chunk]]
        if rate > 0:
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.01 - time.perf_counter()))
            continue
        await asyncio.gather(*futures)
    await producer.flush()


def start_profile(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    py_spy = ROOT / ".venv" / "bin" / "py-spy"
    cmd = [
        str(py_spy),
        "record",
        "-p",
        str(pid),
        "-d",
        str(seconds),
        "-r",
        "200",
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_consumer(
    settings: Settings,
    name: str,
    proc: subprocess.Popen[bytes],
    group: str,
    topic: str,
    warmup: Values,
    values: Values,
    *,
    rate: float = 0,
    extra_pids: Callable[[], Awaitable[dict[str, int]]] | None = None,
    profile: Path | None = None,
) -> ConsumerRun:
    """Warm ``proc`` up with ``warmup``, then measure it over ``values`` (see the module doc)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    producer = make_producer(settings)
    await admin.start()
    await producer.start()
    try:
        await produce(producer, topic, warmup, 0)
        await wait_committed(admin, group, topic, len(warmup), proc)
        pids: dict[str, int | list[int]] = {name: proc.pid}
        if extra_pids is not None:
            pids.update(await extra_pids())
        spy = start_profile(proc.pid, profile, 15) if profile is not None else None
        meter = CpuMeter(pids).start()
        started = time.perf_counter()
        await produce(producer, topic, values, rate)
        await wait_committed(admin, group, topic, len(warmup) + len(values), proc)
        seconds = time.perf_counter() - started
        meter.stop()
        if spy is not None:
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
            spy.wait(60)
        return ConsumerRun(name, len(values), seconds, meter.per_item_ms(len(values)))
    finally:
        await producer.stop()
        await admin.close()


def start_bare(
    settings: Settings, mode: str, source: str, target: str, group: str, *, worker_fetch: bool
) -> subprocess.Popen[bytes]:
    """``python -m bench.bare_loops MODE SOURCE TARGET GROUP`` with the workers' environment;
    ``worker_fetch``: with the workers' fetch tuning, else aiokafka's defaults."""
    cmd = [sys.executable, "-m", "bench.bare_loops", mode, source, target, group]
    env = service_env(settings, BARE_WORKER_FETCH="1" if worker_fetch else "0")
    return subprocess.Popen(cmd, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
