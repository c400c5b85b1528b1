"""Keeping an in-memory copy of database configuration current (keys, platforms).

``ChangeFeed`` LISTENs on ``mibo_registry`` (the triggers of migration 0002 NOTIFY there in the
same transaction as every change to projects, platforms, keys and key scopes) and calls
``reload`` — after the first connect, after every reconnect (whatever changed while it was away),
after notifications (coalesced: a burst of changes costs one reload), and every
``refresh_interval`` seconds as a backstop. ``on_change`` sees each notification first, for
changes that must take effect before the reload finishes (a revoked key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

from shared.runtime.backoff import Backoff

REGISTRY_CHANNEL = "mibo_registry"
"""PostgreSQL NOTIFY channel: every change to projects, platforms, keys or key scopes is announced here
(the triggers of migration 0002)."""


log = structlog.get_logger(__name__)


class ChangeFeed:
    def __init__(
        self,
        dsn: str,
        reload: Callable[[], Awaitable[object]],  # what it returns is not used
        *,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        refresh_interval: float = 30.0,
        name: str = "registry",
    ) -> None:
        self._dsn = dsn
        self._reload = reload
        self._on_change = on_change
        self._refresh_interval = refresh_interval
        self._name = name
        self._wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.listening = False

    async def start(self) -> None:
        self._wanted.set()
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"{self._name}-listen"),
            asyncio.create_task(self._reloader(), name=f"{self._name}-reload"),
        ]

    async def stop(self) -> None:
        # A flag as well as cancel(): on Python 3.11 a cancellation that lands inside a library's
        # own timeout (the pool's getconn, a connect) can come out as an ordinary error, which
        # the retry loops would take for a failure and retry forever.
        self._closing = True
        self._wanted.set()
        for task in self._tasks:
            task.cancel()
        _, stuck = await asyncio.wait(self._tasks, timeout=10) if self._tasks else (set(), set())
        for task in stuck:
            log.warning(
                "change feed task did not stop in time; abandoning it", feed=self._name, task=task.get_name()
            )

    def request_reload(self) -> None:
        self._wanted.set()

    async def _reloader(self) -> None:
        backoff = Backoff()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh_interval):
                    await self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                await self._reload()
                backoff.reset()
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "change feed reload failed; retrying", feed=self._name, error=repr(exc), retry_in=delay
                )
                await backoff.sleep(delay)
                self._wanted.set()

    def _notified(self, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            change = {}
        if self._on_change is not None:
            self._on_change(change if isinstance(change, dict) else {})
        self._wanted.set()

    async def _listen(self) -> None:
        backoff = Backoff()
        while not self._closing:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
                    self.listening = True
                    backoff.reset()
                    self._wanted.set()  # catch up on what changed while we were away
                    async for notify in conn.notifies():
                        self._notified(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "change feed listener lost its connection; reconnecting",
                    feed=self._name,
                    error=repr(exc),
                    retry_in=delay,
                )
            else:
                delay = backoff.next_delay()
            finally:
                self.listening = False
            if self._closing:
                return
            await backoff.sleep(delay)
