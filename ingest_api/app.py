"""The ingest service's aiohttp application: wiring only; each step lives in its own module."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool

from ingest_api.context import DB_POOL, ENQUEUER, KEY_REGISTRY, METRICS, SETTINGS
from ingest_api.cors import PREFLIGHT_ROUTE, CorsPolicy, cors_middleware, is_preflight
from ingest_api.endpoints import admin
from ingest_api.endpoints.batch import post_batch
from ingest_api.endpoints.otlp import post_otlp_traces, refuse_signal
from ingest_api.endpoints.trace_list import list_traces
from ingest_api.endpoints.trace_read import get_trace
from ingest_api.endpoints.traces import post_trace
from ingest_api.enqueue import Enqueuer
from ingest_api.key_registry import KeyRegistry
from ingest_api.metrics import IngestMetrics
from ingest_api.openapi import openapi_document
from ingest_api.responses import ERROR_CODE, error_middleware, failure_response, json_response
from shared.contracts.topics import Topics
from shared.runtime.settings import Settings, libpq_url

log = structlog.get_logger(__name__)


async def healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when a trace can be accepted: the broker is reachable now (the Enqueuer's health: the
    last send or probe succeeded, see ingest_api.enqueue) and the key registry has loaded."""
    checks = {
        "kafka": request.app[ENQUEUER].ready,
        "key_registry": request.app[KEY_REGISTRY].ready,
        "key_listener": request.app[KEY_REGISTRY].listening,
    }
    ok = all(checks.values())
    return json_response(
        {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return json_response(openapi_document())


def edge_middleware(cors: CorsPolicy) -> Any:
    """The one middleware: count every answer, apply CORS (``ingest_api.cors``), turn every failure
    into the route's error format (``ingest_api.responses.failure_response``).

    One coroutine per request rather than a chain of three: without CORS origins configured (the
    default) and for anything but a preflight, the CORS step has nothing to do, and the error
    step is inlined here. With CORS on, or for a preflight, the CORS middleware runs around the
    error middleware as before."""
    cors_step = cors_middleware(cors)
    enabled = cors.enabled

    @web.middleware
    async def edge(request: web.Request, handler: Any) -> web.StreamResponse:
        if enabled or is_preflight(request):
            response = await cors_step(request, functools.partial(error_middleware, handler=handler))
        else:
            try:
                response = await handler(request)
            except Exception as exc:
                response = failure_response(request, exc)
        resource = request.match_info.route.resource
        # A CORS preflight matched no route (there is no OPTIONS route): it counts under its path's.
        route = resource.canonical if resource else request.get(PREFLIGHT_ROUTE, "unmatched")
        request.app[METRICS].count_request(route, response.status, request.get(ERROR_CODE, ""))
        return response

    return edge


def create_app(settings: Settings) -> web.Application:
    cors = CorsPolicy.from_origins(settings.cors_origins)
    if cors.enabled:
        log.info("cors enabled on the public routes", origins=sorted(cors.origins))
    # The body is read by ingest_api.content with its own limit; aiohttp's is only a backstop.
    # Outermost first: the counter sees every answer, CORS headers go on every answer the error
    # middleware made (errors and 503s included), and CORS answers preflights before the router's 405.
    app = web.Application(
        middlewares=[edge_middleware(cors)],
        client_max_size=settings.max_body_bytes + 1,
    )
    app[SETTINGS] = settings
    app[METRICS] = IngestMetrics()
    app.cleanup_ctx.append(_db_pool)
    app.cleanup_ctx.append(_key_registry)
    app.cleanup_ctx.append(_producer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", healthz)  # what Mibo's n8n node's credential test calls
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/public/traces", post_trace)
    app.router.add_get("/public/traces", list_traces)
    # "batch" is the batch endpoint's path: a GET there is 405, not a lookup of a trace named "batch"
    app.router.add_get(r"/public/traces/{id:(?!batch$)[^/]+}", get_trace)
    app.router.add_post("/public/traces/batch", post_batch)
    for prefix in ("", "/public/traces"):  # OTLP/HTTP's standard paths, also under the generic endpoint
        app.router.add_post(f"{prefix}/v1/traces", post_otlp_traces)
        app.router.add_post(f"{prefix}/v1/metrics", refuse_signal)
        app.router.add_post(f"{prefix}/v1/logs", refuse_signal)
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


async def _key_registry(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    registry = KeyRegistry(
        libpq_url(settings.database_url),
        app[DB_POOL],
        settings.key_pepper,
        refresh_interval=settings.registry_refresh_seconds,
    )
    app[METRICS].watch_registry(lambda: registry.size, registry.refresh_age, lambda: registry.db_lookups)
    app[KEY_REGISTRY] = registry
    await registry.start()
    yield
    await registry.stop()


async def _producer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    enqueuer = Enqueuer(
        settings, Topics.with_prefix(settings.kafka_topic_prefix).raw, app[METRICS], app[DB_POOL]
    )
    app[ENQUEUER] = enqueuer
    await enqueuer.start()
    yield
    await enqueuer.stop()
