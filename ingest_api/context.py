"""Typed keys for what the ingest app holds: settings, database pool, producer, key registry."""

from __future__ import annotations

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", AsyncConnectionPool)
