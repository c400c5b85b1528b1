"""Helpers for tests that drive the running pipeline: a tenant (project, platforms, keys), a
service launched as a real process, and a tap that reads a topic from the beginning."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from shared import registry
from shared.runtime.kafka import Record, reader, refresh_metadata
from shared.runtime.settings import Settings, libpq_url


@dataclass
class Tenant:
    project_id: uuid.UUID
    n8n: uuid.UUID  # workflow_id wf-<suffix>
    flowise: uuid.UUID  # chatflow_id cf-<suffix>
    http: uuid.UUID
    workflow_id: str
    chatflow_id: str
    keys: dict[str, str] = field(default_factory=dict)  # name -> full key
    key_ids: dict[str, uuid.UUID] = field(default_factory=dict)


async def make_tenant(settings: Settings) -> Tenant:
    """A project with an n8n, a Flowise and an HTTP platform, and keys: ``all`` (unrestricted),
    ``n8n`` (restricted to the n8n platform) and ``two`` (restricted to n8n and Flowise)."""
    suffix = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"test-{suffix}")
        n8n = await registry.create_platform(conn, project.id, "n8n prod", "n8n", workflow_id=f"wf-{suffix}")
        flowise = await registry.create_platform(
            conn, project.id, "flowise bot", "flowise", chatflow_id=f"cf-{suffix}"
        )
        http = await registry.create_platform(conn, project.id, "http", "http_api")
        tenant = Tenant(project.id, n8n.id, flowise.id, http.id, f"wf-{suffix}", f"cf-{suffix}")
        for name, scope in (("all", []), ("n8n", [n8n.id]), ("two", [n8n.id, flowise.id])):
            created = await registry.create_key(conn, settings.key_pepper, project.id, name, scope)
            tenant.keys[name] = created.key
            tenant.key_ids[name] = created.id
    return tenant


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        KAFKA_TOPIC_PREFIX=settings.kafka_topic_prefix,
        KAFKA_TOPIC_PARTITIONS=str(settings.kafka_topic_partitions),
        KAFKA_REPLICATION_FACTOR=str(settings.kafka_replication_factor),
        ADMIN_TOKEN=settings.admin_token,
        KEY_PEPPER=settings.key_pepper,
        PRODUCE_TIMEOUT_SECONDS=str(settings.produce_timeout_seconds),
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; a process that does not stop in time is killed (and the test that
        asserts on the exit code sees -9), so no test leaves a process behind."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def start_ingest(settings: Settings, log_dir: Path, *, ready: bool = True, **extra: str) -> Service:
    port = free_port()
    env = service_env(settings, INGEST_HOST="127.0.0.1", INGEST_PORT=str(port), **extra)
    log = log_dir / f"ingest-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest_api"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = Service(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    path = "/readyz" if ready else "/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ingest exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(service.url + path, timeout=2) as resp:
                if resp.status == 200:
                    return service
        except OSError:
            pass
        time.sleep(0.2)
    service.stop()
    raise AssertionError(f"ingest not ready:\n{log.read_text()[-3000:]}")


def start_worker(module: str, settings: Settings, log_dir: Path, **extra: str) -> Service:
    """``python -m <module>`` (router_worker, storage_worker) as a real process; ready when its
    metrics server's /healthz answers 200 (its consumer joined the group)."""
    port = free_port()
    port_setting = {"router_worker": "ROUTER_METRICS_PORT", "storage_worker": "STORAGE_METRICS_PORT"}[module]
    env = service_env(settings, METRICS_HOST="127.0.0.1", **{port_setting: str(port)}, **extra)
    log = log_dir / f"{module}-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)
    service = Service(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{module} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(service.url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return service
        except OSError:
            pass
        time.sleep(0.2)
    service.stop()
    raise AssertionError(f"{module} not ready:\n{log.read_text()[-3000:]}")


def metric_value(service: Service, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    with urllib.request.urlopen(service.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


class TopicTap:
    """Reads a topic from the beginning in the background and indexes records by key."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.records: list[Record] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._new = asyncio.Event()

    async def start(self) -> None:
        consumer = reader(self.settings.kafka_bootstrap_servers)
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            await refresh_metadata(consumer)
            partitions = consumer.partitions_for_topic(self.topic) or set()
        consumer.assign([TopicPartition(self.topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                self.records.extend(records)
            if batch:
                self._new.set()

    async def __aenter__(self) -> TopicTap:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()

    async def wait_for(self, key: bytes, timeout: float = 15.0) -> Record:
        found = await self.wait_for_all(lambda r: r.key == key, 1, timeout)
        return found[0]

    async def wait_for_keys(self, keys: set[bytes], timeout: float = 60.0) -> set[bytes]:
        """Wait until a record of every key in ``keys`` arrived (duplicates count once);
        returns the keys seen."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            seen = {r.key for r in self.records if r.key in keys}
            if seen == keys or asyncio.get_running_loop().time() > deadline:
                return seen
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.5)
            except TimeoutError:
                pass

    async def wait_for_all(
        self, predicate: Callable[[Record], bool], count: int, timeout: float = 30.0
    ) -> list[Record]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [r for r in self.records if predicate(r)]
            if len(found) >= count or asyncio.get_running_loop().time() > deadline:
                return found
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.5)
            except TimeoutError:
                pass
