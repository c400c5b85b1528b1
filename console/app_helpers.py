"""Small request/response helpers the pages share (no state of their own)."""

from __future__ import annotations

import uuid

from aiohttp import web

from console.security import Session


def is_secure(request: web.Request) -> bool:
    """Behind TLS: the connection itself, or a proxy that says so (it can only make cookies stricter)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: float
) -> None:
    """HttpOnly, SameSite=Strict, the whole console's path; Secure behind TLS."""
    response.set_cookie(
        name,
        value,
        max_age=int(max_age),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=is_secure(request),
    )


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser GETs the page (a reload never re-submits)."""
    return web.Response(status=303, headers={"Location": location})


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound(text="No such page: the address holds an id that is not a UUID.") from None


def session_of(request: web.Request) -> Session:
    session = request.get("session")
    if not isinstance(session, Session):
        raise web.HTTPUnauthorized(text="Sign in first.")
    return session


def flash(request: web.Request, message: str) -> None:
    """A message shown once, on the next page this session sees."""
    session_of(request).flashes.append(message)


def form_text(form: object, name: str) -> str:
    """A text field of a posted form ('' when absent or a file)."""
    value = form.get(name) if hasattr(form, "get") else None
    return value if isinstance(value, str) else ""
