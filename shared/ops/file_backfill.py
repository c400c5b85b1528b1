"""``mibo-ingest replay file``: backfill a JSONL archive of traces through the public API.

Each line is one trace body (the batch endpoint's item: ``spans`` or ``data``, optional
``externalId``, ``metadata``...). Lines go out in batches to ``POST /public/traces/batch`` from a
few concurrent senders under a rate limit; a 503 is retried after its ``Retry-After``, items that
failed to be queued are retried, items the API rejected (4xx) are written to ``<file>.rejected.jsonl``
with their error and never retried.

Re-running is harmless: a line without ``externalId`` gets a deterministic one
(``bf-`` + a hash of its line number and content), so a re-sent line replaces its own earlier
version instead of adding a trace. A checkpoint (``<file>.checkpoint.json``: every line before
``next_line`` is done) lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from shared.runtime.backoff import Backoff


@dataclass
class Line:
    number: int  # 1-based line number in the file
    body: bytes  # what is sent as the batch item


@dataclass
class Summary:
    queued: int = 0
    rejected: int = 0  # refused by the API or not JSON: written to the rejected file
    retried: int = 0  # items or batches sent again after 503 / not acknowledged
    skipped: int = 0  # before the checkpoint
    errors: list[str] = field(default_factory=list)


def item_for(number: int, text: str) -> bytes | str:
    """The batch item for one line, or why the line cannot be sent (pure)."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(value, dict):
        return "not a JSON object"
    if "externalId" not in value:
        digest = hashlib.sha256(f"{number}:{text}".encode()).hexdigest()[:32]
        value["externalId"] = f"bf-{digest}"
    return msgspec.json.encode(value)


class RateLimiter:
    """At most ``rate`` items per second on average (None: unlimited)."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, items: int) -> None:
        if not self._rate:
            return
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + items / self._rate
        if wait > 0:
            await asyncio.sleep(wait)


def read_checkpoint(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["next_line"])
    except (OSError, ValueError, KeyError):
        return 1


def write_checkpoint(path: Path, next_line: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"next_line": next_line}))
    tmp.replace(path)


async def _send(
    session: aiohttp.ClientSession, url: str, key: str, batch: list[Line], summary: Summary, rejected: Any
) -> None:
    """Send one batch until every item is queued or rejected."""
    todo = batch
    backoff = Backoff(initial=1.0, cap=30.0)
    while todo:
        body = b'{"traces": [' + b",".join(line.body for line in todo) + b"]}"
        try:
            async with session.post(
                url, data=body, headers={"x-api-key": key, "Content-Type": "application/json"}
            ) as resp:
                answer = await resp.json(content_type=None)
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            summary.errors.append(f"lines {todo[0].number}-{todo[-1].number}: {exc!r}; retrying")
            summary.retried += len(todo)
            await backoff.sleep(backoff.next_delay())
            continue
        if status == 503 or status == 429:
            summary.retried += len(todo)
            delay = backoff.next_delay()
            await backoff.sleep(float(retry_after) if retry_after else delay)
            continue
        if status != 207:
            for line in todo:
                rejected.write(json.dumps({"line": line.number, "error": answer.get("error")}) + "\n")
            summary.rejected += len(todo)
            summary.errors.append(
                f"lines {todo[0].number}-{todo[-1].number}: HTTP {status} {answer.get('error', {}).get('code')}"
            )
            return
        again = []
        for line, result in zip(todo, answer["data"]["results"], strict=True):
            if result["status"] == "queued":
                summary.queued += 1
            elif result["status"] == "failed":
                again.append(line)
            else:
                rejected.write(json.dumps({"line": line.number, "error": result["error"]}) + "\n")
                summary.rejected += 1
        if again:
            summary.retried += len(again)
            await backoff.sleep(backoff.next_delay())
        todo = again


async def backfill(
    path: Path,
    url: str,
    key: str,
    *,
    batch_size: int = 100,
    concurrency: int = 4,
    rate: float | None = None,
    checkpoint: Path | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Summary:
    checkpoint = checkpoint or path.with_name(path.name + ".checkpoint.json")
    start = read_checkpoint(checkpoint)
    summary = Summary()
    lines = path.read_text().splitlines()  # noqa: ASYNC240 - a CLI command reading its one file once
    total = len(lines)
    endpoint = url.rstrip("/") + "/public/traces/batch"
    limiter = RateLimiter(rate)
    batches: list[list[Line]] = []
    current: list[Line] = []
    rejected_path = path.with_name(path.name + ".rejected.jsonl")
    with open(rejected_path, "a") as rejected:  # noqa: ASYNC230 - the CLI command's own small log
        for number, text in enumerate(lines, start=1):
            if number < start:
                summary.skipped += 1
                continue
            if not text.strip():
                continue
            item = item_for(number, text)
            if isinstance(item, str):
                rejected.write(
                    json.dumps({"line": number, "error": {"code": "LOCAL", "message": item}}) + "\n"
                )
                summary.rejected += 1
                continue
            current.append(Line(number, item))
            if len(current) == batch_size:
                batches.append(current)
                current = []
        if current:
            batches.append(current)

        done_batches: set[int] = set()
        next_line = start
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(batches)):
            queue.put_nowait(index)
        progress(summary.skipped, total)

        async def sender(session: aiohttp.ClientSession) -> None:
            nonlocal next_line
            while not queue.empty():
                index = queue.get_nowait()
                await limiter.take(len(batches[index]))
                await _send(session, endpoint, key, batches[index], summary, rejected)
                done_batches.add(index)
                # the checkpoint moves over the contiguous prefix of finished batches
                first_open = next((i for i in range(len(batches)) if i not in done_batches), None)
                next_line = total + 1 if first_open is None else batches[first_open][0].number
                write_checkpoint(checkpoint, next_line)
                progress(summary.skipped + summary.queued + summary.rejected, total)

        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(sender(session) for _ in range(max(1, concurrency))))
    if not batches:
        write_checkpoint(checkpoint, total + 1)
    return summary
