"""CORS on the public trace routes, so a browser page (OpenTelemetry's web SDK with its OTLP/HTTP
exporter, or any ``fetch``) may send traces and read them back.

Which origins: ``CORS_ALLOWED_ORIGINS`` (``shared.runtime.settings.parse_origins``): a list of
exact origins, or ``*``. An ``Origin`` is never reflected because it was sent: the answer's
``Access-Control-Allow-Origin`` is either the configured origin it equals, or ``*`` when ``*`` is
configured (no credentials are involved: the key travels in ``x-api-key``, never in a cookie).

Which routes: the public trace routes (``CORS_PATHS``). The admin API, ``/metrics``,
``/openapi.json`` and the health checks never answer cross-origin: a browser page has no business
there, and an admin token must not become usable from one.

- **Preflight** (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) on a public
  route: ``204`` with the allowed origin, the path's methods, the request headers an exporter
  sends (``ALLOWED_HEADERS``), ``Access-Control-Max-Age`` and ``Vary``; otherwise ``403
  CORS_NOT_ALLOWED`` in the route's own error format (Mibo's envelope, or a ``google.rpc.Status``
  on the OTLP paths) saying whether the origin, the method or a header was refused. A ``403``
  rather than a ``404``: the route exists (``/openapi.json`` says so), and what the developer who
  opens the browser's network panel must learn is "this origin is not allowed here", not "no such
  route". It is the same ``403`` whether CORS is off or the origin merely not listed, so the
  answer tells nothing about the configuration. ``OPTIONS`` stays undocumented: it is no operation
  of the API, and an ``OPTIONS`` that is not a preflight is still a ``405``.
- **Every other answer** of a public route (``202``, ``4xx`` and ``503`` alike) carries
  ``Access-Control-Allow-Origin`` for an allowed ``Origin``, and exposes ``Retry-After`` so that
  the exporter's retry can honour it; with CORS on, each carries ``Vary: Origin`` (it depends on
  it). An ``Origin`` that is not allowed gets no CORS header, but its request is handled as any
  other: CORS only decides what a browser lets a page read, the API key decides what is accepted.
- Preflights are counted in ``ingest_requests_total`` under their route's template with their
  real status (``204``, or ``403`` code ``CORS_NOT_ALLOWED``), never as the ``405`` aiohttp's
  router would have made of an ``OPTIONS``.

The decision (``CorsPolicy``) is pure; ``cors_middleware`` is the shell that applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_urldispatcher import AbstractResource

from ingest_api.responses import ApiError, Detail, error_middleware
from shared.runtime.settings import ANY_ORIGIN

log = structlog.get_logger(__name__)

CORS_PATHS = frozenset(
    {
        "/public/traces",  # POST a trace, GET the key's traces
        "/public/traces/batch",
        "/public/traces/{id}",
        *(
            f"{prefix}/v1/{signal}"
            for prefix in ("", "/public/traces")
            for signal in ("traces", "metrics", "logs")
        ),
    }
)
"""Route templates (``{id:regex}`` read as ``{id}``) that answer cross-origin. OTLP's metrics and
logs paths are among them although they only refuse (404 "only traces"): a browser exporter that
can read that refusal stops, one whose preflight fails sees a network error and keeps retrying."""
CORS_METHODS = frozenset({"GET", "POST"})
ALLOWED_HEADERS = (
    "accept",  # the web exporters' older versions set it (safelisted for most values anyway)
    "content-encoding",  # gzip/zstd bodies
    "content-type",  # application/json, application/x-protobuf
    "traceparent",  # a page whose fetch instrumentation propagates context to every URL
    "tracestate",
    "x-api-key",
    "x-request-id",
)
"""Request headers a page may send: what Mibo's clients and OpenTelemetry's web exporters send.
(``Content-Length``, ``User-Agent`` and the like are set by the browser and need no permission.)"""
EXPOSED_HEADERS = ("retry-after",)
"""Response headers a page may read beyond the safelisted ones: the exporters read ``Retry-After``
of a ``503`` (and of a ``429``) to time their retry."""
MAX_AGE_SECONDS = 7200
"""How long a browser may reuse a preflight's answer: Chromium's ceiling (Firefox allows a day).
A batch span processor exports every few seconds, and each export would otherwise be preceded by
its preflight. The cost: an origin removed from the list keeps its cached permission for up to
this long — the key, not CORS, is what refuses a sender (a revoked key is refused within a second)."""
REFUSED = "CORS_NOT_ALLOWED"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

PREFLIGHT_ROUTE = web.RequestKey("cors_preflight_route", str)
"""The route template a preflight was answered for (read by the request counter: aiohttp's router
matches no route for an ``OPTIONS``)."""

_REGEX_SEGMENT = re.compile(r"\{(\w+):[^}]*\}")


def route_template(canonical: str) -> str:
    """A resource's canonical path with ``{name:regex}`` read as ``{name}``."""
    return _REGEX_SEGMENT.sub(r"{\1}", canonical)


@dataclass(frozen=True)
class Preflight:
    """The answer to a preflight: ``headers`` of the ``204``, or the ``refusal``."""

    headers: dict[str, str] = field(default_factory=dict)
    refusal: Detail | None = None


@dataclass(frozen=True)
class CorsPolicy:
    """Which origins may read the public routes' answers, and what a preflight is told."""

    origins: frozenset[str] = frozenset()

    @classmethod
    def from_origins(cls, origins: Iterable[str]) -> CorsPolicy:
        """``origins`` as ``Settings.cors_origins`` gives them (normalised, or ``("*",)``)."""
        return cls(frozenset(origins))

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    @property
    def any_origin(self) -> bool:
        return ANY_ORIGIN in self.origins

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` for a request with this ``Origin``, or None.

        Never an echo of whatever was sent: ``*`` when every origin is allowed, else the
        configured origin that the header equals exactly (browsers send origins in the form
        ``parse_origins`` writes them)."""
        if origin is None or not self.enabled:
            return None
        if self.any_origin:
            return ANY_ORIGIN
        return origin if origin in self.origins else None

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """CORS headers of an answer (not a preflight) on a public route."""
        if not self.enabled:
            return {}
        allowed = self.allow_origin(origin)
        if allowed is None:
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
            "Vary": "Origin",
        }

    def preflight(
        self, origin: str, method: str, requested_headers: str, methods: Iterable[str]
    ) -> Preflight:
        """The answer to ``OPTIONS`` with ``Origin: origin``, ``Access-Control-Request-Method:
        method`` and ``Access-Control-Request-Headers: requested_headers`` on a path that serves
        ``methods``. Refusals name what was refused without echoing what was sent."""
        allowed = self.allow_origin(origin)
        if allowed is None:
            message = (
                "Cross-origin requests from this origin are not allowed: "
                "the server's CORS_ALLOWED_ORIGINS does not list it"
            )
            return Preflight(refusal=Detail("origin_not_allowed", message, "Origin", "header"))
        served = sorted(CORS_METHODS.intersection(methods))
        if method not in served:
            message = f"This method is not allowed cross-origin on this path; allowed: {', '.join(served)}"
            return Preflight(
                refusal=Detail("method_not_allowed", message, "Access-Control-Request-Method", "header")
            )
        if not_allowed := requested_header_names(requested_headers) - set(ALLOWED_HEADERS):
            message = (
                f"{'A requested header is' if len(not_allowed) == 1 else 'Requested headers are'} "
                f"not allowed cross-origin; allowed: {', '.join(ALLOWED_HEADERS)}"
            )
            return Preflight(
                refusal=Detail("header_not_allowed", message, "Access-Control-Request-Headers", "header")
            )
        return Preflight(
            headers={
                "Access-Control-Allow-Origin": allowed,
                "Access-Control-Allow-Methods": ", ".join(served),
                "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
                "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
                "Vary": PREFLIGHT_VARY,
            }
        )


def requested_header_names(value: str) -> set[str]:
    """``Access-Control-Request-Headers`` as a set of lower-case names."""
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def is_preflight(request: web.BaseRequest) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def add_vary(response: web.StreamResponse, names: str) -> None:
    """Add ``names`` to the answer's ``Vary`` without repeating one it already lists."""
    present = [part.strip() for part in response.headers.get(hdrs.VARY, "").split(",") if part.strip()]
    lowered = {part.lower() for part in present}
    present += [name.strip() for name in names.split(",") if name.strip().lower() not in lowered]
    response.headers[hdrs.VARY] = ", ".join(present)


def cors_middleware(policy: CorsPolicy) -> Middleware:
    """The middleware that applies ``policy``: it sits between the request counter and the error
    middleware (``create_app``), so it sees every answer the error middleware made, and the
    counter sees its preflight answers."""
    public: list[AbstractResource] | None = None  # built on first use, once the router is frozen
    canonicals: frozenset[str] = frozenset()

    def public_resources(app: web.Application) -> list[AbstractResource]:
        nonlocal public, canonicals
        if public is None:
            public = [r for r in app.router.resources() if route_template(r.canonical) in CORS_PATHS]
            canonicals = frozenset(r.canonical for r in public)
        return public

    async def public_route(request: web.Request) -> tuple[str, set[str]] | None:
        """(canonical path, methods) of the public route at this request's path, if any; the
        methods only when the router matched none (a preflight, a 405)."""
        resources = public_resources(request.app)
        resource = request.match_info.route.resource
        if resource is not None:  # the router matched path and method
            return (resource.canonical, set()) if resource.canonical in canonicals else None
        for candidate in resources:
            _, methods = await candidate.resolve(request)  # the path's methods when it matches
            if methods:
                return candidate.canonical, set(methods)
        return None

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_preflight(request):
            route = await public_route(request)
            if route is not None:
                return await _preflight(request, policy, *route)
        elif not policy.enabled:
            return await handler(request)
        response = await handler(request)
        if response.prepared:
            return response
        headers = policy.response_headers(request.headers.get(hdrs.ORIGIN))
        if headers and await public_route(request) is not None:
            vary = headers.pop("Vary")
            response.headers.update(headers)
            add_vary(response, vary)
        return response

    return cors


async def _preflight(
    request: web.Request, policy: CorsPolicy, canonical: str, methods: set[str]
) -> web.StreamResponse:
    request[PREFLIGHT_ROUTE] = canonical
    answer = policy.preflight(
        request.headers[hdrs.ORIGIN],
        request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD],
        request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, ""),
        methods,
    )
    if answer.refusal is None:
        return web.Response(status=204, headers=answer.headers)
    log.debug("cors preflight refused", route=canonical, reason=answer.refusal.type)
    refusal = ApiError(403, REFUSED, answer.refusal.msg, [answer.refusal])

    async def refuse(_: web.Request) -> web.StreamResponse:
        raise refusal

    # The error middleware renders the refusal in the route's own format (and notes its code for
    # the request counter), exactly as it renders every other error.
    response = await error_middleware(request, refuse)
    add_vary(response, PREFLIGHT_VARY)
    return response
