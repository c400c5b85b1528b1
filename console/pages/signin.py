"""Sign in with the admin token (``ADMIN_TOKEN``), sign out.

The token is compared in constant time; attempts are rate-limited per client address
(``CONSOLE_SIGNIN_ATTEMPTS_PER_MINUTE``, then 429 with ``Retry-After``). The sign-in form carries
a double-submit token (a cookie and a hidden field that must match), so another site cannot sign a
browser in to this console either. A successful sign-in gets a new session (never one the browser
brought), and sign-out forgets it on the server.
"""

from __future__ import annotations

import math
import urllib.parse

import structlog
from aiohttp import web

from console import security
from console.app_helpers import redirect, set_cookie
from console.context import SESSIONS, SETTINGS, SIGNIN_LIMIT
from console.render import render

log = structlog.get_logger("console")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of this console only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/projects"
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/projects"
    return target


def _form(
    request: web.Request, *, error: str = "", status: int = 200, target: str | None = None
) -> web.Response:
    token = request.cookies.get(security.SIGNIN_COOKIE) or security.new_token()
    request["signin_csrf"] = token
    response = render(
        request,
        "signin.html",
        {
            "error": error,
            "next": safe_next(target or request.query.get("next")),
            "signed_out": request.query.get("signed_out") == "1",
        },
        status=status,
    )
    set_cookie(response, request, security.SIGNIN_COOKIE, token, 600)
    return response


async def signin_page(request: web.Request) -> web.Response:
    if "session" in request:
        return redirect(safe_next(request.query.get("next")))
    return _form(request)


async def signin(request: web.Request) -> web.Response:
    wait = request.app[SIGNIN_LIMIT].attempt(request.remote or "unknown")
    if wait:
        log.warning("sign-in rate limit reached", client=request.remote)
        response = _form(
            request,
            error=f"Too many sign-in attempts. Try again in {math.ceil(wait)} seconds.",
            status=429,
        )
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    form = await request.post()
    posted_next = form.get("next")
    target = posted_next if isinstance(posted_next, str) else None
    expected = request.cookies.get(security.SIGNIN_COOKIE, "")
    presented = form.get(security.CSRF_FIELD)
    if not expected or not isinstance(presented, str) or not security.same_secret(presented, expected):
        return _form(request, error="The sign-in form expired. Please try again.", status=403, target=target)
    token = form.get("token")
    admin_token = request.app[SETTINGS].admin_token
    if not isinstance(token, str) or not security.same_secret(token.strip(), admin_token):
        log.info("sign-in refused", client=request.remote)
        return _form(request, error="That is not the admin token.", status=401, target=target)
    cookie, _session = request.app[SESSIONS].create()
    log.info("signed in", client=request.remote)
    response = redirect(safe_next(target))
    set_cookie(response, request, security.COOKIE, cookie, request.app[SETTINGS].console_session_seconds)
    response.del_cookie(security.SIGNIN_COOKIE, path="/")
    return response


async def signout(request: web.Request) -> web.Response:
    request.app[SESSIONS].drop(request.cookies.get(security.COOKIE))
    log.info("signed out", client=request.remote)
    response = redirect("/signin?signed_out=1")
    response.del_cookie(security.COOKIE, path="/")
    return response


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/signin", signin_page)
    router.add_post("/signin", signin)
    router.add_post("/signout", signout)
