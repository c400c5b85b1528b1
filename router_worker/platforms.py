"""The platforms the router decides between: an immutable snapshot, kept current in memory.

The router never queries per message: it reads a snapshot of every platform, replaced whole on
each reload (driven by shared.registry.change_feed: NOTIFY on change, periodic backstop).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
import psycopg

from shared.registry.change_feed import ChangeFeed


class PlatformInfo(msgspec.Struct, frozen=True):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    type: str
    workflow_id: str | None = None
    chatflow_id: str | None = None
    otlp_service_name: str | None = None


class Snapshot(msgspec.Struct, frozen=True):
    """Every platform, by project and by id, as of ``taken_at`` (wall clock, before the read)."""

    by_project: dict[uuid.UUID, tuple[PlatformInfo, ...]]
    by_id: dict[uuid.UUID, PlatformInfo]
    taken_at: dt.datetime

    @classmethod
    def of(cls, platforms: Iterable[PlatformInfo], taken_at: dt.datetime | None = None) -> Snapshot:
        by_project: dict[uuid.UUID, list[PlatformInfo]] = {}
        by_id: dict[uuid.UUID, PlatformInfo] = {}
        for platform in platforms:
            by_project.setdefault(platform.project_id, []).append(platform)
            by_id[platform.id] = platform
        return cls(
            {project: tuple(items) for project, items in by_project.items()},
            by_id,
            taken_at or dt.datetime.now(dt.UTC),
        )

    def project(self, project_id: uuid.UUID) -> tuple[PlatformInfo, ...]:
        return self.by_project.get(project_id, ())


EMPTY = Snapshot({}, {}, dt.datetime.min.replace(tzinfo=dt.UTC))


async def load_snapshot(conn: psycopg.AsyncConnection[Any]) -> Snapshot:
    taken_at = dt.datetime.now(dt.UTC)
    cur = await conn.execute(
        """SELECT id, project_id, name, type, workflow_id, chatflow_id, otlp_service_name
           FROM platforms ORDER BY created_at, id"""
    )
    return Snapshot.of((PlatformInfo(*row) for row in await cur.fetchall()), taken_at)


class PlatformRegistry:
    """The current snapshot, replaced by ``reload`` (never mutated in place)."""

    def __init__(self, dsn: str, *, refresh_interval: float = 30.0) -> None:
        self._dsn = dsn
        self.snapshot = EMPTY
        self.first_load = asyncio.Event()
        self._feed = ChangeFeed(dsn, self.reload, refresh_interval=refresh_interval, name="platform registry")

    async def reload(self) -> Snapshot:
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            self.snapshot = await load_snapshot(conn)
        self.first_load.set()
        return self.snapshot

    @property
    def loaded(self) -> bool:
        return self.first_load.is_set()

    async def start(self) -> None:
        await self._feed.start()

    async def stop(self) -> None:
        await self._feed.stop()
