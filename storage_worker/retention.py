"""The storage worker's retention task: every ``INTERVAL_SECONDS``, one round of
``shared.db.retention`` when ``TRACE_RETENTION_DAYS`` is set.

Why here, not (only) a cron job: retention then holds wherever the pipeline runs, with no second
thing to schedule; the storage worker already owns the writes to ``traces``. With several storage
workers each runs the task, and the round's advisory lock lets one expire while the others skip.
It runs beside the consume loops on a connection of its own, a small batch per transaction, so a
round never holds up a batch being written. ``mibo-ingest db expire`` runs the same round by hand.
"""

from __future__ import annotations

import asyncio

import psycopg
import structlog

from shared.db import retention
from shared.runtime.backoff import pause

log = structlog.get_logger(__name__)

INTERVAL_SECONDS = 600.0


async def expire_every(url: str, days: int, stop: asyncio.Event, interval: float = INTERVAL_SECONDS) -> None:
    """Until ``stop``: a round at once, then one every ``interval`` seconds. Off when ``days`` is 0.
    A failed round (database away) is logged and tried again at the next interval."""
    if days <= 0:
        return
    while not stop.is_set():
        try:
            done = await retention.expire(url, days, go_on=lambda: not stop.is_set())
        except (psycopg.Error, OSError) as exc:
            log.warning("retention round failed; will retry", error=repr(exc), retry_in_seconds=interval)
        else:
            if done.traces or done.aliases:
                log.info("expired traces", traces=done.traces, aliases=done.aliases, retention_days=days)
        await pause(interval, stop)
