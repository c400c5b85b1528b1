"""One PostgreSQL connection that heals itself: opened lazily, re-opened after it broke.

The storage worker owns a single connection per job (writing traces, flushing last-used times):
each job is sequential, so a pool would only add hand-offs. When PostgreSQL restarts, the
connection breaks, the caller's operation raises (and is retried by its loop), ``discard`` drops
the dead connection, and the next ``connection()`` opens a fresh one and runs ``setup`` on it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

Setup = Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]

CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    # Notice a silently dead peer (a host gone, not just a restarted server) within ~30 s.
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class Database:
    def __init__(self, url: str, *, name: str, setup: Setup | None = None) -> None:
        self._url = url
        self._name = name
        self._setup = setup
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._down_since: float | None = None

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        await self.discard()
        conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=False, application_name=self._name, **CONNECT_OPTIONS
        )
        try:
            if self._setup is not None:
                await self._setup(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        if self._down_since is not None:
            log.info("database connection restored", job=self._name, down_seconds=self.down_for())
            self._down_since = None
        return conn

    def down_for(self) -> float:
        return 0.0 if self._down_since is None else round(time.monotonic() - self._down_since, 1)

    async def failed(self, exc: BaseException) -> None:
        """The last operation failed for a reason other than its data: start afresh next time."""
        if self._down_since is None:
            self._down_since = time.monotonic()
        await self.discard()

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        await self.discard()
