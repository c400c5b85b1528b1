"""The ingest service's aiohttp application: wiring only; each step lives in its own module."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from ingest_api import admin
from ingest_api.context import DB_POOL, SETTINGS
from ingest_api.responses import error_middleware
from shared.settings import Settings, libpq_url


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_db_pool)
    app.router.add_get("/healthz", healthz)
    admin.setup(app)
    return app


async def _db_pool(app: web.Application) -> AsyncIterator[None]:
    pool = AsyncConnectionPool(
        libpq_url(app[SETTINGS].database_url),
        min_size=1,
        max_size=10,
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=False)
    app[DB_POOL] = pool
    yield
    await pool.close()
