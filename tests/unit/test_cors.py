"""CORS: the pure decision (which origin, which headers, what a preflight is told), the setting
that configures it, and the middleware on a bare aiohttp app (no services: the real ingest process
is tested in tests/integration/test_cors.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from ingest_api.app import create_app
from ingest_api.cors import (
    ALLOWED_HEADERS,
    CORS_PATHS,
    EXPOSED_HEADERS,
    MAX_AGE_SECONDS,
    PREFLIGHT_ROUTE,
    CorsPolicy,
    add_vary,
    cors_middleware,
    requested_header_names,
    route_template,
)
from ingest_api.responses import ApiError, error_middleware
from shared.runtime.settings import Settings, parse_origins

APP = "https://app.example.com"
DEV = "http://localhost:5173"
LISTED = CorsPolicy.from_origins((APP, DEV))
ANY = CorsPolicy.from_origins(("*",))
OFF = CorsPolicy.from_origins(())
# What OpenTelemetry's web exporter (fetch transport, JSON or protobuf) asks for, with the key
# header, and what Mibo's clients add.
EXPORTER_HEADERS = "content-type,x-api-key"
MIBO_HEADERS = "Content-Type, X-Api-Key, X-Request-Id, Content-Encoding"


# -- the setting -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "origins"),
    [
        ("", ()),
        (" , ", ()),
        ("*", ("*",)),
        (" * ", ("*",)),
        ("https://app.example.com", (APP,)),
        ("HTTPS://App.Example.COM:443/", (APP,)),  # as a browser writes it
        ("http://localhost:5173, https://app.example.com", (DEV, APP)),
        ("http://a.test:80,http://a.test", ("http://a.test",)),  # duplicates once
        ("http://[::1]:8080", ("http://[::1]:8080",)),
        ("https://bücher.example", ("https://xn--bcher-kva.example",)),
        ("chrome-extension://abcdefghijklmnop", ("chrome-extension://abcdefghijklmnop",)),
    ],
)
def test_origins_are_written_as_browsers_send_them(text: str, origins: tuple[str, ...]) -> None:
    assert parse_origins(text) == origins
    assert Settings.from_env({"CORS_ALLOWED_ORIGINS": text}).cors_origins == origins


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("null", "sandboxed"),
        ("https://app.example.com,*", "`*` already allows every origin"),
        ("https://*.example.com", "wildcards"),
        ("https://app.example.com/path", "not an origin"),
        ("https://app.example.com?x", "not an origin"),
        ("app.example.com", "not an origin"),
        ("localhost:5173", "not an origin"),
        ("https://user@app.example.com", "not an origin"),
        ("https://app.example.com:99999", "port"),
    ],
)
def test_what_is_not_an_origin_is_a_configuration_error(text: str, says: str) -> None:
    with pytest.raises(SystemExit, match="CORS_ALLOWED_ORIGINS") as caught:
        Settings.from_env({"CORS_ALLOWED_ORIGINS": text})
    assert says in str(caught.value.code)


def test_cors_is_off_by_default() -> None:
    assert Settings.from_env({}).cors_origins == ()
    assert not CorsPolicy.from_origins(Settings.from_env({}).cors_origins).enabled


# -- which origin ------------------------------------------------------------------------------
def test_only_a_listed_origin_is_allowed_and_it_is_the_configured_string() -> None:
    assert LISTED.allow_origin(APP) == APP
    assert LISTED.allow_origin(DEV) == DEV
    for origin in (
        None,
        "null",
        "https://evil.example",
        "https://app.example.com.evil.example",
        "https://APP.example.com",  # browsers never send this; no loose matching either
        "http://app.example.com",  # another scheme is another origin
        "https://app.example.com:8443",
        f"{APP}, https://evil.example",  # two Origin values folded into one
        "",
    ):
        assert LISTED.allow_origin(origin) is None, origin


def test_star_answers_star_and_never_the_sent_origin() -> None:
    for origin in (APP, "https://anything.example", "null"):
        assert ANY.allow_origin(origin) == "*"
    assert ANY.allow_origin(None) is None  # not a cross-origin request: nothing to say


def test_off_allows_nothing() -> None:
    assert not OFF.enabled
    assert OFF.allow_origin(APP) is None
    assert OFF.response_headers(APP) == {}
    assert OFF.preflight(APP, "POST", EXPORTER_HEADERS, {"POST"}).refusal is not None


# -- which headers -----------------------------------------------------------------------------
def test_answers_to_an_allowed_origin_expose_retry_after_and_vary() -> None:
    headers = LISTED.response_headers(APP)
    assert headers == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Expose-Headers": "retry-after",
        "Vary": "Origin",
    }
    assert "retry-after" in EXPOSED_HEADERS
    assert "Access-Control-Allow-Credentials" not in headers  # the key is a header, not a cookie


def test_answers_to_another_or_no_origin_only_vary() -> None:
    assert LISTED.response_headers("https://evil.example") == {"Vary": "Origin"}
    assert LISTED.response_headers(None) == {"Vary": "Origin"}  # a cache must not serve it to a browser


@pytest.mark.parametrize("requested", [EXPORTER_HEADERS, MIBO_HEADERS, "", "traceparent, tracestate, accept"])
def test_a_preflight_from_an_allowed_origin_is_answered_with_everything_a_browser_checks(
    requested: str,
) -> None:
    answer = LISTED.preflight(APP, "POST", requested, {"POST", "GET", "HEAD"})
    assert answer.refusal is None
    headers = answer.headers
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"  # HEAD needs no permission
    allowed = requested_header_names(headers["Access-Control-Allow-Headers"])
    assert requested_header_names(requested) <= allowed
    assert {"content-type", "x-api-key", "x-request-id", "content-encoding"} <= allowed
    assert headers["Access-Control-Max-Age"] == str(MAX_AGE_SECONDS)
    assert "Origin" in headers["Vary"]
    assert set(ALLOWED_HEADERS) == allowed


def test_a_preflight_says_what_was_refused_without_echoing_it() -> None:
    origin = LISTED.preflight("https://evil.example", "POST", EXPORTER_HEADERS, {"POST"}).refusal
    assert origin is not None and origin.type == "origin_not_allowed" and origin.path == "Origin"
    assert "evil" not in origin.msg
    method = LISTED.preflight(APP, "DELETE", "", {"GET", "HEAD"}).refusal
    assert method is not None and method.type == "method_not_allowed"
    assert method.msg.endswith("allowed: GET")
    header = LISTED.preflight(APP, "POST", "content-type, authorization, x-secret-thing", {"POST"}).refusal
    assert header is not None and header.type == "header_not_allowed"
    assert "x-secret-thing" not in header.msg and "authorization" not in header.msg.split("allowed:")[0]


def test_the_same_refusal_whether_cors_is_off_or_the_origin_not_listed() -> None:
    assert OFF.preflight(APP, "POST", "", {"POST"}) == LISTED.preflight(
        "https://evil.example", "POST", "", {"POST"}
    )


def test_add_vary_keeps_what_is_there() -> None:
    response = web.Response(headers={"Vary": "Accept-Encoding"})
    add_vary(response, "Origin")
    add_vary(response, "origin, Access-Control-Request-Method")
    assert response.headers["Vary"] == "Accept-Encoding, Origin, Access-Control-Request-Method"


# -- which routes ------------------------------------------------------------------------------
def test_the_cors_routes_are_served_public_routes_and_never_admin() -> None:
    app = create_app(Settings.from_env({"ADMIN_TOKEN": "t", "KEY_PEPPER": "p"}))
    served = {route_template(r.canonical) for r in app.router.resources()}
    assert served >= CORS_PATHS
    assert not [path for path in CORS_PATHS if not path.startswith(("/public/", "/v1/"))]
    for path in ("/public/traces", "/public/traces/batch", "/public/traces/{id}", "/v1/traces"):
        assert path in CORS_PATHS
    assert not {p for p in served - CORS_PATHS if p.startswith("/public/")}  # every public route


# -- the middleware on a bare app --------------------------------------------------------------
async def _ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True}, status=202)


async def _busy(_: web.Request) -> web.Response:
    raise ApiError(503, "SERVICE_UNAVAILABLE", "busy", headers={"Retry-After": "1"})


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    resource = request.match_info.route.resource
    request.app[COUNTED].append(
        (resource.canonical if resource else request.get(PREFLIGHT_ROUTE, "unmatched"), response.status)
    )
    return response


COUNTED = web.AppKey("counted", list)


@pytest.fixture
async def bare() -> AsyncIterator[tuple[str, list[tuple[str, int]]]]:
    """The ingest app's middleware order with stand-in handlers: counter, CORS, error middleware."""
    app = web.Application(middlewares=[_count, cors_middleware(LISTED), error_middleware])
    app[COUNTED] = []
    app.router.add_post("/public/traces", _ok)
    app.router.add_get("/public/traces", _ok)
    app.router.add_post("/public/traces/batch", _busy)
    app.router.add_get(r"/public/traces/{id:(?!batch$)[^/]+}", _ok)
    app.router.add_post("/v1/traces", _ok)
    app.router.add_post("/admin/v1/projects", _ok)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")), app[COUNTED]
    await server.close()


async def _call(
    base: str, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, base + path, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def _preflight(origin: str, method: str = "POST", headers: str = EXPORTER_HEADERS) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_middleware_answers_preflights_and_counts_them_under_their_route(
    bare: tuple[str, list[tuple[str, int]]],
) -> None:
    base, counted = bare
    status, headers, body = await _call(base, "OPTIONS", "/public/traces", _preflight(APP))
    assert status == 204 and body == b""
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    status, headers, _ = await _call(base, "OPTIONS", "/public/traces/0190", _preflight(APP, "GET"))
    assert status == 204 and headers["Access-Control-Allow-Methods"] == "GET"
    status, _, body = await _call(base, "OPTIONS", "/v1/traces", _preflight("https://evil.example"))
    assert status == 403 and b"not allowed" in body
    assert counted == [
        ("/public/traces", 204),
        ("/public/traces/{id}", 204),
        ("/v1/traces", 403),
    ]


async def test_middleware_leaves_admin_and_non_preflight_options_to_the_router(
    bare: tuple[str, list[tuple[str, int]]],
) -> None:
    base, _ = bare
    status, headers, _ = await _call(base, "OPTIONS", "/admin/v1/projects", _preflight(APP))
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await _call(base, "OPTIONS", "/public/traces", {"Origin": APP})  # no request method
    assert status == 405 and re.search("POST", headers["Allow"])
    status, headers, _ = await _call(base, "POST", "/admin/v1/projects", {"Origin": APP})
    assert status == 202 and "Access-Control-Allow-Origin" not in headers and "Vary" not in headers


async def test_middleware_puts_cors_headers_on_answers_and_errors(
    bare: tuple[str, list[tuple[str, int]]],
) -> None:
    base, _ = bare
    status, headers, _ = await _call(base, "POST", "/public/traces", {"Origin": APP})
    assert status == 202 and headers["Access-Control-Allow-Origin"] == APP and headers["Vary"] == "Origin"
    status, headers, _ = await _call(base, "POST", "/public/traces/batch", {"Origin": APP})
    assert status == 503 and headers["Retry-After"] == "1"
    assert headers["Access-Control-Allow-Origin"] == APP
    assert "retry-after" in headers["Access-Control-Expose-Headers"]
    status, headers, _ = await _call(base, "GET", "/public/traces/batch", {"Origin": APP})  # 405
    assert status == 405 and headers["Access-Control-Allow-Origin"] == APP
    status, headers, _ = await _call(base, "POST", "/public/traces", {"Origin": "https://evil.example"})
    assert status == 202 and "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"
