"""What the console's handlers find on the application (typed aiohttp app keys)."""

from __future__ import annotations

import psycopg_pool
from aiohttp import web

from console.pipeline import PipelineProbe
from console.security import RateLimit, Sessions
from shared.runtime.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB_POOL = web.AppKey("db_pool", psycopg_pool.AsyncConnectionPool)
SESSIONS = web.AppKey("sessions", Sessions)
SIGNIN_LIMIT = web.AppKey("signin_limit", RateLimit)
PIPELINE = web.AppKey("pipeline", PipelineProbe)
