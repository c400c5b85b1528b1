"""Typed keys for what the ingest app holds: settings, database pool, producer, key registry."""

from __future__ import annotations

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from ingest_api.enqueue import Enqueuer
from ingest_api.key_registry import KeyRegistry
from ingest_api.metrics import IngestMetrics
from shared.runtime.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", AsyncConnectionPool)
ENQUEUER = web.AppKey("enqueuer", Enqueuer)
KEY_REGISTRY = web.AppKey("key_registry", KeyRegistry)
METRICS = web.AppKey("metrics", IngestMetrics)
