"""Templates and the formatting they use: one Jinja2 environment with autoescaping on for every
template, and control characters made visible, so a user-supplied string (a platform or key name, a
trace payload, a dead-letter detail) is always shown as text, never as markup."""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any

import jinja2
from aiohttp import web

from shared.contracts.times import iso_utc

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("console", "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

KEEP = frozenset("\n\t")


def visible(value: object) -> object:
    """Control characters (NUL, escape, ...) as ``\\u0000``-style text; then Jinja escapes."""
    if isinstance(value, str) and any(unicodedata.category(ch) == "Cc" and ch not in KEEP for ch in value):
        return "".join(
            f"\\u{ord(ch):04x}" if unicodedata.category(ch) == "Cc" and ch not in KEEP else ch for ch in value
        )
    return value


ENV.finalize = visible


def relative(moment: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``just now``, ``5 minutes ago``, ``3 days ago``; ``Never`` for None."""
    if moment is None:
        return "Never"
    seconds = ((now or dt.datetime.now(dt.UTC)) - moment).total_seconds()
    if seconds < 0:
        return "just now"
    for size, unit in ((86400 * 365, "year"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now" if seconds < 10 else f"{int(seconds)} seconds ago"


def exact(moment: dt.datetime | None) -> str:
    return "" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(moment: dt.datetime | None) -> str:
    return "" if moment is None else iso_utc(moment)


def age(seconds: float | None) -> str:
    """A duration for people: ``42 s``, ``5 min``, ``3 h 10 min``, ``2 days``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    days = seconds // 86400
    return f"{days} day{'' if days == 1 else 's'}"


ENV.filters.update(relative=relative, exact=exact, iso=iso, age=age)


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """The page ``template`` with ``context`` and what every page needs (the session's CSRF token,
    its one-time messages, the request's path)."""
    session = request.get("session")
    flashes: list[str] = []
    if session is not None:
        flashes, session.flashes = session.flashes, []
    page = ENV.get_template(template).render(
        **context,
        csrf=session.csrf if session is not None else request.get("signin_csrf", ""),
        signed_in=session is not None,
        flashes=flashes,
        path=request.path,
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")
