"""The console's aiohttp application: security headers on every answer, the session check,
the CSRF check on every state-changing request, error pages, static files, and the routes of each
page module."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import psycopg_pool
import structlog
from aiohttp import web

from console import security
from console.app_helpers import is_secure
from console.context import DB_POOL, PIPELINE, SESSIONS, SETTINGS, SIGNIN_LIMIT
from console.pages import dead_letters, keys, pipeline, platforms, projects, signin, traces
from console.pipeline import PipelineProbe
from console.render import render
from shared.registry import NotFound
from shared.runtime.settings import Settings, libpq_url

log = structlog.get_logger("console")

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/signin", "/static/", "/healthz")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def headers_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; HTTP errors and refusals as pages, never a stack trace."""
    try:
        response = await handler(request)
    except web.HTTPRedirection as exc:
        response = web.Response(status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status == 304:
            raise
        response = render(
            request,
            "error.html",
            {"status": exc.status, "reason": exc.reason, "text": exc.text or ""},
            status=exc.status,
        )
        for name in ("Retry-After", "Allow"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except NotFound as err:
        response = render(
            request, "error.html", {"status": 404, "reason": "Not Found", "text": err.message}, status=404
        )
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        log.warning("database unavailable", error=repr(exc))
        response = render(
            request,
            "error.html",
            {
                "status": 503,
                "reason": "Service Unavailable",
                "text": "The database is not reachable right now; try again in a moment.",
            },
            status=503,
        )
        response.headers["Retry-After"] = "5"
    response.headers.update(security.SECURITY_HEADERS)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def require_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Nothing but the sign-in page and static files without a session; then the CSRF check."""
    session = request.app[SESSIONS].get(request.cookies.get(security.COOKIE))
    if session is not None:
        request["session"] = session
    if request.path.startswith(PUBLIC):
        return await handler(request)
    if session is None:
        if request.method in security.SAFE_METHODS and not request.path.endswith(".json"):
            target = (
                "/signin" if request.path == "/" else "/signin?next=" + urllib.parse.quote(request.path_qs)
            )
            raise web.HTTPSeeOther(target)
        raise web.HTTPUnauthorized(text="Sign in first: your session ended or you never signed in.")
    if request.method not in security.SAFE_METHODS:
        await check_csrf(request, session)
    return await handler(request)


async def check_csrf(request: web.Request, session: security.Session) -> None:
    if not security.same_origin(
        request.headers.get("Origin"), request.scheme if not is_secure(request) else "https", request.host
    ):
        log.warning(
            "cross-origin form refused",
            path=request.path,
            origin=request.headers.get("Origin"),
            host=request.host,
        )
        raise web.HTTPForbidden(text="This request came from another site, so it was refused.")
    form = await request.post()
    presented = request.headers.get(security.CSRF_HEADER) or form.get(security.CSRF_FIELD)
    if not isinstance(presented, str) or not security.csrf_ok(session, presented):
        log.warning("csrf check failed", path=request.path)
        raise web.HTTPForbidden(
            text="The form's security token is missing or out of date (CSRF check). "
            "Go back, reload the page and try again."
        )


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def home(_request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/projects")


def build_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[headers_and_errors, require_session], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[SESSIONS] = security.Sessions(settings.console_session_seconds)
    app[SIGNIN_LIMIT] = security.RateLimit(settings.console_signin_attempts_per_minute)
    app[PIPELINE] = PipelineProbe(settings)
    app[DB_POOL] = psycopg_pool.AsyncConnectionPool(
        libpq_url(settings.database_url), kwargs={"autocommit": True}, min_size=1, max_size=4, open=False
    )
    app.on_startup.append(_open)
    app.on_cleanup.append(_close)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", home)
    app.router.add_static("/static/", STATIC, append_version=False)
    for module in (signin, projects, platforms, keys, dead_letters, traces, pipeline):
        module.setup(app.router)
    return app


async def _open(app: web.Application) -> None:
    await app[DB_POOL].open(wait=False)


async def _close(app: web.Application) -> None:
    await app[DB_POOL].close()
    await app[PIPELINE].close()
