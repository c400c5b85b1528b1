"""End-to-end accounting: send a known mix of traces through the whole running pipeline and prove
that every accepted trace is stored exactly once or dead-lettered with the expected reason.

The mix (``plan``, pure) covers both body shapes, traces with and without external ids, re-sends
of an external id with a newer payload, and traces meant for the dead-letter topic
(``platform_ambiguous``, ``platform_not_found``, and ``storage_rejected`` via a ``\\u0000`` string
PostgreSQL refuses). ``send`` posts it with retries on 503 (honouring ``Retry-After``) and on lost
connections; ``reconcile`` reads the database, the dead-letter topic and every stage's Prometheus
counters and reports each count. Used by ``tests/test_e2e.py`` (small N, in ``make test``) and by
``bench/chaos.py`` (larger N, with faults injected while sending).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import psycopg

from shared.contracts.dlq import read_headers
from shared.devstack.pipeline import Service, Tenant, TopicTap, metric_value
from shared.runtime.settings import Settings, libpq_url

Expect = Literal["stored", "platform_ambiguous", "platform_not_found", "storage_rejected"]


@dataclass
class Send:
    index: int
    key: str  # which of the tenant's keys: all, n8n, two
    body: dict[str, object]
    external_id: str | None
    expect: Expect
    after: int | None = None  # a re-send: only after send ``after`` was accepted
    trace_id: str | None = None  # filled by ``send`` from the 202
    attempts: int = 0

    def identity(self, project: uuid.UUID) -> bytes:
        return f"{project}:{self.external_id or self.trace_id}".encode()


def plan(tenant: Tenant, n: int, *, seed: int = 7, all_external_ids: bool = False) -> list[Send]:
    """``n`` sends; with ``all_external_ids`` every trace carries one (retries stay idempotent,
    which fault scenarios need: a request cut off after Kafka took it is retried safely)."""
    rng = random.Random(seed)
    sends: list[Send] = []
    latest: dict[str, int] = {}  # external id → index of its newest version so far
    run = uuid.uuid4().hex[:8]
    for i in range(n):
        body: dict[str, object]
        roll = rng.random()
        ext = f"{run}-{i}" if all_external_ids or rng.random() < 0.5 else None
        if roll < 0.35:
            body = {"spans": [{"span_id": "root", "name": f"step {i}", "attributes": {"i": i}}]}
            sends.append(Send(i, "n8n", body, ext, "stored"))
            if ext:
                latest[ext] = i
        elif roll < 0.6:
            body = {"data": {"input": f"q{i}", "output": "a"}, "metadata": {"workflowId": tenant.workflow_id}}
            sends.append(Send(i, "two", body, ext, "stored"))
            if ext:
                latest[ext] = i
        elif roll < 0.72 and latest:
            # a newer version of an earlier trace, sent after the previous version was accepted
            external_id = rng.choice(sorted(latest))
            previous = sends[latest[external_id]]
            body = {**previous.body, "externalMetadata": {"version": i}}
            sends.append(Send(i, previous.key, body, external_id, "stored", after=previous.index))
            latest[external_id] = i
        elif roll < 0.84:
            sends.append(Send(i, "all", {"data": {"i": i}}, ext, "platform_ambiguous"))
        elif roll < 0.92:
            body = {"data": i, "platformId": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
            sends.append(Send(i, "all", body, ext, "platform_not_found"))
        else:
            sends.append(Send(i, "n8n", {"data": {"text": "nul \u0000 inside"}}, ext, "storage_rejected"))
    return sends


@dataclass
class Sender:
    urls: list[str]  # ingest processes; requests rotate over them and fail over
    tenant: Tenant
    concurrency: int = 16
    retry_after_cap: float = 2.0
    retries_503: int = 0
    retries_lost: int = 0
    refused: list[str] = field(default_factory=list)
    rate: float = 0.0  # most requests a second (0: as fast as the answers come), to keep load going
    # (monotonic time, HTTP status; 0 for a lost connection) of every answer: when 503s came and went
    answers: list[tuple[float, int]] = field(default_factory=list)
    _next_start: float = 0.0

    async def _paced(self) -> None:
        if self.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._next_start)
        self._next_start = start + 1 / self.rate
        await asyncio.sleep(start - loop.time())

    def sent(self) -> int:
        return len(self.answers)

    def count(self, status: int) -> int:
        return sum(1 for _, s in self.answers if s == status)

    def failures_since(self, since: float) -> list[float]:
        """When answers other than 202 (503s, lost connections) came, from ``since`` on."""
        return [t for t, status in self.answers if t >= since and status != 202]

    async def _one(self, session: aiohttp.ClientSession, send: Send) -> None:
        headers = {"x-api-key": self.tenant.keys[send.key], "Content-Type": "application/json"}
        if send.external_id:
            headers["x-request-id"] = send.external_id
        data = json.dumps(send.body)
        backoff = 0.1
        while True:
            url = self.urls[(send.index + send.attempts) % len(self.urls)] + "/public/traces"
            send.attempts += 1
            await self._paced()
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    self.answers.append((asyncio.get_running_loop().time(), resp.status))
                    if resp.status == 202:
                        send.trace_id = answer["data"]["id"]
                        return
                    if resp.status == 503:
                        self.retries_503 += 1
                        await asyncio.sleep(
                            min(float(resp.headers.get("Retry-After", 1)), self.retry_after_cap)
                        )
                        continue
                    self.refused.append(f"send {send.index}: HTTP {resp.status} {answer}")
                    return
            except (aiohttp.ClientError, TimeoutError):
                self.answers.append((asyncio.get_running_loop().time(), 0))
                self.retries_lost += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def run(self, sends: list[Send]) -> None:
        accepted = {s.index: asyncio.Event() for s in sends}
        queue: asyncio.Queue[Send] = asyncio.Queue()
        for s in sends:
            queue.put_nowait(s)
        timeout = aiohttp.ClientTimeout(total=30)

        async def worker(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                send = queue.get_nowait()
                if send.after is not None:
                    await accepted[send.after].wait()  # a re-send goes out after the original's 202
                await self._one(session, send)
                accepted[send.index].set()

        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(self.concurrency)))


@dataclass
class Report:
    accepted: int = 0
    stored_rows: int = 0
    stored_versions: int = 0  # accepted sends represented by a row (re-sends count)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    dlq_redeliveries: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    counter_checks: dict[str, bool] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return (
            not self.missing
            and not self.duplicates
            and not self.wrong
            and self.accepted == self.stored_versions + sum(self.dead_lettered.values())
        )

    def table(self) -> str:
        lines = [
            "| count | value |",
            "|---|---|",
            f"| accepted (202) | {self.accepted} |",
            f"| stored rows (distinct) | {self.stored_rows} |",
            f"| accepted versions stored | {self.stored_versions} |",
        ]
        lines += [f"| dead-lettered: {reason} | {n} |" for reason, n in sorted(self.dead_lettered.items())]
        lines += [
            f"| missing | {len(self.missing)} |",
            f"| duplicates | {len(self.duplicates)} |",
            f"| wrong place or version | {len(self.wrong)} |",
            f"| DLQ re-deliveries (allowed) | {self.dlq_redeliveries} |",
        ]
        lines += [f"| metric {name} | {value:.0f} |" for name, value in sorted(self.counters.items())]
        lines += [
            f"| check {name} | {'ok' if ok else 'MISMATCH'} |"
            for name, ok in sorted(self.counter_checks.items())
        ]
        lines.append(f"| **reconciliation** | {'exact' if self.exact else 'NOT exact'} |")
        return "\n".join(lines)


async def _rows(settings: Settings, project: uuid.UUID) -> dict[bytes, tuple[str, tuple[object, object]]]:
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as conn:
        cur = await conn.execute(
            "SELECT id, external_id, payload, external_metadata FROM traces WHERE project_id = %s", (project,)
        )
        return {
            f"{project}:{ext or tid}".encode(): (str(tid), (payload, extm))
            for tid, ext, payload, extm in await cur.fetchall()
        }


async def settle(
    settings: Settings, project: uuid.UUID, sends: list[Send], dlq_tap: TopicTap, timeout: float
) -> None:
    """Wait until every accepted send is either a row or a DLQ record (or the time is up)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        rows = await _rows(settings, project)
        dlq_keys = {r.key for r in dlq_tap.records}
        if all(s.identity(project) in rows or s.identity(project) in dlq_keys for s in sends if s.trace_id):
            await asyncio.sleep(2)  # let in-flight duplicates land too, so they would be seen
            return
        await asyncio.sleep(0.5)


async def reconcile(
    settings: Settings,
    tenant: Tenant,
    sends: list[Send],
    dlq_tap: TopicTap,
    services: dict[str, list[Service]],
) -> Report:
    project = tenant.project_id
    report = Report()
    rows = await _rows(settings, project)
    report.stored_rows = len(rows)
    dlq_records = [r for r in dlq_tap.records if r.key and r.key.startswith(f"{project}:".encode())]
    dlq_by_key: dict[bytes, list[str]] = {}
    for record in dlq_records:
        dlq_by_key.setdefault(record.key, []).append(read_headers(record.headers).get("dlq-reason", "?"))
    report.dlq_redeliveries = len(dlq_records) - len(dlq_by_key)

    newest: dict[bytes, Send] = {}
    for send in sends:
        if send.trace_id is None:
            continue
        report.accepted += 1
        ident = send.identity(project)
        if send.expect == "stored":
            newest[ident] = send  # sends run in index order per identity (re-sends wait)
            if ident in rows:
                report.stored_versions += 1
            else:
                report.missing.append(f"send {send.index} ({ident.decode()}) not stored")
            if ident in dlq_by_key:
                report.wrong.append(f"send {send.index} stored and dead-lettered: {dlq_by_key[ident]}")
        else:
            reasons = set(dlq_by_key.get(ident, []))
            if send.expect in reasons:
                report.dead_lettered[send.expect] += 1
            elif reasons:
                report.wrong.append(f"send {send.index} dead-lettered as {reasons}, expected {send.expect}")
            else:
                report.missing.append(
                    f"send {send.index} ({ident.decode()}) neither stored nor dead-lettered"
                )
            if ident in rows:
                report.wrong.append(f"send {send.index} expected {send.expect} but stored")
    for ident, send in newest.items():
        if ident in rows:
            payload, external_metadata = rows[ident][1]
            if payload != send.body or external_metadata != send.body.get("externalMetadata"):
                report.wrong.append(f"{ident.decode()}: stored version is not the newest accepted one")
    expected_idents = {s.identity(project) for s in sends if s.trace_id and s.expect == "stored"}
    report.duplicates = [i.decode() for i in rows if i not in expected_idents]
    report.counters, report.counter_checks = _counters(services)
    return report


def _sum(services: list[Service], name: str, **labels: str) -> float:
    total = 0.0
    for service in services:
        try:
            total += metric_value(service, name, **labels)
        except OSError:
            pass  # a killed process: its counters died with it
    return total


# Each stage's counters that must add up: (label, stage, Prometheus sample). Read here from the
# test's service processes, and by the operator console's Pipeline page from the running services.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("ingest accepted", "ingest", "ingest_traces_accepted_total"),
    ("ingest cancelled (503)", "ingest", "ingest_traces_cancelled_total"),
    ("ingest unfenced (503)", "ingest", "ingest_unfenced_503_total"),
    ("router routed", "router", "router_routed_total"),
    ("router dead-lettered", "router", "router_dead_lettered_total"),
    ("storage stored", "storage", "storage_traces_stored_total"),
    ("storage replaced", "storage", "storage_traces_replaced_total"),
    ("storage duplicates", "storage", "storage_duplicates_ignored_total"),
    ("storage stale", "storage", "storage_stale_versions_ignored_total"),
    ("storage cancelled", "storage", "storage_cancelled_ignored_total"),
    ("storage dead-lettered", "storage", "storage_dead_lettered_total"),
)


def counter_checks(c: dict[str, float]) -> dict[str, bool]:
    """Whether the stages' counters (labelled as in :data:`COUNTERS`) add up."""
    # A trace answered 503 was cancelled (shared.db.cancellations): it may still reach the router
    # (it was in the producer's buffer), never storage's rows.
    seen_by_router = c["router routed"] + c["router dead-lettered"]
    return {
        "ingest accepted <= router routed + dead-lettered <= accepted + cancelled + unfenced": c[
            "ingest accepted"
        ]
        <= seen_by_router
        <= c["ingest accepted"] + c["ingest cancelled (503)"] + c["ingest unfenced (503)"],
        "router routed = storage stored + replaced + duplicates + stale + cancelled + dead-lettered": c[
            "router routed"
        ]
        == c["storage stored"]
        + c["storage replaced"]
        + c["storage duplicates"]
        + c["storage stale"]
        + c["storage cancelled"]
        + c["storage dead-lettered"],
    }


def _counters(services: dict[str, list[Service]]) -> tuple[dict[str, float], dict[str, bool]]:
    c = {label: _sum(services[stage], name) for label, stage, name in COUNTERS}
    return c, counter_checks(c)
