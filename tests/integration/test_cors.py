"""CORS through the real ingest process (``python -m ingest_api``, real broker and database), with
the requests a browser makes: a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-*``), then the request itself with ``Origin``.

One ingest process with ``CORS_ALLOWED_ORIGINS`` set, the session's (CORS off) for the default, and
one with an unreachable broker for the 503."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from google.rpc import code_pb2

from shared.devstack.pipeline import Service, Tenant, free_port, metric_value, start_ingest
from shared.runtime.settings import Settings
from tests.storage_helpers import eventually

APP = "https://app.example.com"
DEV = "http://localhost:5173"
EVIL = "https://evil.example"
TRACE, SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
OTLP_JSON = json.dumps(
    {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE,
                                "spanId": SPAN,
                                "name": "click",
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000100000000",
                            }
                        ]
                    }
                ],
            }
        ]
    }
).encode()
# (path, method the page will use) of every public route a browser may call.
PUBLIC = [
    ("/public/traces", "POST"),
    ("/public/traces", "GET"),
    ("/public/traces/batch", "POST"),
    ("/public/traces/0190a8e0-0000-7000-8000-000000000000", "GET"),
    ("/v1/traces", "POST"),
    ("/public/traces/v1/traces", "POST"),
]
Answer = tuple[int, bytes, dict[str, str]]


async def call(
    service: Service, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> Answer:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, service.url + path, data=body or None, headers=headers) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def preflight(origin: str, method: str = "POST", headers: str = "content-type,x-api-key") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


@pytest.fixture(scope="module")
def cors_ingest(settings: Settings, service_logs: Path) -> Iterator[Service]:
    service = start_ingest(settings, service_logs, CORS_ALLOWED_ORIGINS=f"{DEV}, {APP}")
    yield service
    service.stop()


@pytest.mark.parametrize(("path", "method"), PUBLIC)
async def test_a_preflight_from_an_allowed_origin_is_204_with_what_the_browser_checks(
    cors_ingest: Service, path: str, method: str
) -> None:
    status, body, headers = await call(
        cors_ingest,
        "OPTIONS",
        path,
        preflight(APP, method, "content-type,x-api-key,x-request-id,content-encoding,traceparent"),
    )
    assert status == 204 and body == b"", body[:300]
    assert headers["Access-Control-Allow-Origin"] == APP
    assert method in headers["Access-Control-Allow-Methods"].split(", ")
    allowed = {h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key", "x-request-id", "content-encoding", "traceparent"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in headers


async def test_preflights_are_counted_as_204_and_403_never_as_405(cors_ingest: Service) -> None:
    before_405 = metric_value(cors_ingest, "ingest_requests_total", status="405")
    before = metric_value(cors_ingest, "ingest_requests_total", route="/public/traces", status="204")
    refused = {"route": "/v1/traces", "status": "403", "code": "CORS_NOT_ALLOWED"}
    before_refused = metric_value(cors_ingest, "ingest_requests_total", **refused)
    for _ in range(3):
        assert (await call(cors_ingest, "OPTIONS", "/public/traces", preflight(DEV)))[0] == 204
    assert (await call(cors_ingest, "OPTIONS", "/v1/traces", preflight(EVIL)))[0] == 403
    assert (
        metric_value(cors_ingest, "ingest_requests_total", route="/public/traces", status="204") == before + 3
    )
    assert metric_value(cors_ingest, "ingest_requests_total", **refused) == before_refused + 1
    assert metric_value(cors_ingest, "ingest_requests_total", status="405") == before_405


async def test_answers_and_errors_carry_the_allowed_origin(cors_ingest: Service, tenant: Tenant) -> None:
    key = tenant.keys["all"]
    origin = {"Origin": APP}
    status, body, headers = await call(
        cors_ingest,
        "POST",
        "/public/traces",
        {
            **origin,
            "Content-Type": "application/json",
            "x-api-key": key,
            "x-request-id": f"cors-{uuid.uuid4()}",
        },
        b'{"data": {"input": "from a browser", "output": "..."}}',
    )
    assert status == 202, body
    assert headers["Access-Control-Allow-Origin"] == APP and headers["Vary"] == "Origin"
    assert "retry-after" in headers["Access-Control-Expose-Headers"].lower()
    trace_id = json.loads(body)["data"]["id"]
    # errors in the Mibo envelope: 401, 400, 404 on the read route
    for method, path, headers_in, payload, expected in (
        ("POST", "/public/traces", {"x-api-key": "mibo_" + "x" * 40}, b"{}", 401),
        ("POST", "/public/traces", {"x-api-key": key, "Content-Type": "application/json"}, b"[", 400),
        ("GET", f"/public/traces/{uuid.uuid4()}", {"x-api-key": key}, b"", 404),
        ("GET", "/public/traces/batch", {"x-api-key": key}, b"", 405),
    ):
        status, body, headers = await call(cors_ingest, method, path, {**origin, **headers_in}, payload)
        assert status == expected, (path, status, body[:300])
        assert json.loads(body)["success"] is False
        assert headers["Access-Control-Allow-Origin"] == APP, (path, headers)
    # reading back what was sent, as a page would
    status, _, headers = await call(
        cors_ingest, "GET", f"/public/traces/{trace_id}", {**origin, "x-api-key": key}
    )
    assert status in (200, 404) and headers["Access-Control-Allow-Origin"] == APP
    # OTLP/HTTP JSON, what the web exporter posts
    status, body, headers = await call(
        cors_ingest,
        "POST",
        "/v1/traces",
        {"Origin": DEV, "Content-Type": "application/json", "x-api-key": tenant.keys["n8n"]},
        OTLP_JSON,
    )
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == DEV
    status, body, headers = await call(cors_ingest, "POST", "/v1/traces", {"Origin": DEV}, OTLP_JSON)
    assert status == 401 and headers["Access-Control-Allow-Origin"] == DEV
    assert json.loads(body)["code"] == code_pb2.UNAUTHENTICATED


async def test_another_origin_gets_no_cors_headers_and_a_403_preflight(
    cors_ingest: Service, tenant: Tenant
) -> None:
    status, body, headers = await call(cors_ingest, "OPTIONS", "/public/traces", preflight(EVIL))
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    error = json.loads(body)["error"]
    assert error["code"] == "CORS_NOT_ALLOWED" and error["details"][0]["type"] == "origin_not_allowed"
    assert EVIL not in body.decode()
    # the request itself is still handled (CORS is what a browser lets a page read, the key decides)
    status, _, headers = await call(
        cors_ingest,
        "POST",
        "/public/traces",
        {"Origin": EVIL, "Content-Type": "application/json", "x-api-key": tenant.keys["all"]},
        b'{"data": "x"}',
    )
    assert status == 202 and "Access-Control-Allow-Origin" not in headers and headers["Vary"] == "Origin"
    # an allowed origin asking for a method or a header that is not allowed
    status, body, _ = await call(cors_ingest, "OPTIONS", "/public/traces/batch", preflight(APP, "PUT"))
    assert status == 403 and json.loads(body)["error"]["details"][0]["type"] == "method_not_allowed"
    status, body, _ = await call(
        cors_ingest, "OPTIONS", "/public/traces", preflight(APP, "POST", "authorization")
    )
    assert status == 403 and json.loads(body)["error"]["details"][0]["type"] == "header_not_allowed"


async def test_admin_and_operations_routes_never_answer_cross_origin(
    cors_ingest: Service, settings: Settings
) -> None:
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    for path in ("/admin/v1/projects", "/metrics", "/openapi.json", "/healthz", "/readyz"):
        status, _, headers = await call(cors_ingest, "OPTIONS", path, preflight(APP, "GET", "authorization"))
        assert status == 405, path  # as before CORS existed: no OPTIONS route there
        assert not [h for h in headers if h.lower().startswith("access-control-")], (path, headers)
    status, _, headers = await call(cors_ingest, "GET", "/admin/v1/projects", {"Origin": APP, **admin})
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("access-control-")]


async def test_an_options_that_is_not_a_preflight_is_still_405(cors_ingest: Service) -> None:
    status, body, headers = await call(cors_ingest, "OPTIONS", "/public/traces", {"Origin": APP})
    assert status == 405 and "POST" in headers["Allow"]
    assert json.loads(body)["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_cors_is_off_by_default(ingest: Service, tenant: Tenant) -> None:
    """The session's ingest process has no CORS_ALLOWED_ORIGINS: no CORS header on anything, and
    a preflight is a 403 in the route's format (Mibo's envelope, OTLP's google.rpc.Status)."""
    status, body, headers = await call(ingest, "OPTIONS", "/public/traces", preflight(APP))
    assert status == 403 and json.loads(body)["error"]["code"] == "CORS_NOT_ALLOWED"
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    status, body, headers = await call(ingest, "OPTIONS", "/v1/traces", preflight(APP))
    assert status == 403 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["code"] == code_pb2.PERMISSION_DENIED
    status, _, headers = await call(
        ingest,
        "POST",
        "/public/traces",
        {"Origin": APP, "Content-Type": "application/json", "x-api-key": tenant.keys["all"]},
        b'{"data": "x"}',
    )
    assert status == 202
    assert not [h for h in headers if h.lower().startswith("access-control-") or h.lower() == "vary"]


async def test_a_503_carries_the_origin_and_exposes_retry_after(
    settings: Settings, service_logs: Path, tenant: Tenant
) -> None:
    """A browser exporter can only honour Retry-After if it may read it."""
    lonely = start_ingest(
        settings,
        service_logs,
        ready=False,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        CORS_ALLOWED_ORIGINS="*",
    )
    try:
        send = partial(
            call,
            lonely,
            "POST",
            "/v1/traces",
            {"Origin": APP, "Content-Type": "application/json", "x-api-key": tenant.keys["n8n"]},
            OTLP_JSON,
        )

        async def registry_ready() -> bool:
            return (await send())[0] != 401  # the key registry loads in the background

        await eventually(registry_ready, what="the key registry to load")
        status, _, headers = await send()
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert headers["Access-Control-Allow-Origin"] == "*"  # `*` configured: never the sent origin
        assert "retry-after" in headers["Access-Control-Expose-Headers"].lower()
        status, _, headers = await call(lonely, "OPTIONS", "/v1/traces", preflight(EVIL))
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    finally:
        lonely.stop()


# -- a real browser, when the machine has one ------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = textwrap.dedent(
    """\
    <!doctype html><html><body><pre id="out">pending</pre><script>
    // What OpenTelemetry's web exporter (fetch transport) does: a cross-origin POST with
    // Content-Type and the key header (so a preflight first), keepalive, mode cors.
    const out = document.getElementById("out");
    const report = (what) => { out.textContent = JSON.stringify(what); };
    (async () => {
      const results = {};
      try {
        const sent = await fetch("INGEST/v1/traces", {
          method: "POST", mode: "cors", keepalive: true,
          headers: {"Content-Type": "application/json", "x-api-key": "KEY"},
          body: JSON.stringify(BODY),
        });
        results.otlp = sent.status;
        const posted = await fetch("INGEST/public/traces", {
          method: "POST", mode: "cors",
          headers: {"Content-Type": "application/json", "x-api-key": "KEY", "x-request-id": "RID"},
          body: JSON.stringify({data: {input: "from chromium", output: "..."}}),
        });
        results.post = posted.status;
        const id = (await posted.json()).data.id;
        const read = await fetch("INGEST/public/traces/" + id, {headers: {"x-api-key": "KEY"}});
        results.read = read.status;
        try {
          await fetch("INGEST/admin/v1/projects", {headers: {"Authorization": "Bearer TOKEN"}});
          results.admin = "readable";
        } catch (e) { results.admin = "blocked"; }
      } catch (e) { results.error = String(e); }
      report(results);
    })();
    </script></body></html>
    """
)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_chromium_sends_traces_cross_origin(
    settings: Settings, service_logs: Path, tenant: Tenant, tmp_path: Path
) -> None:
    """Debian's Chromium, headless, loads a page from another origin (another port) whose script
    posts an OTLP export and a trace, reads the trace back, and fails to reach the admin API."""
    assert CHROMIUM is not None
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    service = start_ingest(settings, service_logs, CORS_ALLOWED_ORIGINS=origin)
    server = ThreadingHTTPServer(
        ("127.0.0.1", page_port), partial(SimpleHTTPRequestHandler, directory=tmp_path)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        html = (
            PAGE.replace("INGEST", service.url)
            .replace("KEY", tenant.keys["n8n"])
            .replace("TOKEN", settings.admin_token)
            .replace("RID", f"chromium-{uuid.uuid4()}")
            .replace("BODY", OTLP_JSON.decode())
        )
        (tmp_path / "page.html").write_text(html)
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                f"{origin}/page.html",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        dom = result.stdout
        start, end = dom.index('<pre id="out">') + len('<pre id="out">'), dom.index("</pre>")
        results = json.loads(dom[start:end].replace("&quot;", '"'))
        assert results == {"otlp": 200, "post": 202, "read": results.get("read"), "admin": "blocked"}, results
        assert results["read"] in (200, 404)  # stored by now or not: either way the page could read it
        preflights = metric_value(service, "ingest_requests_total", status="204")
        assert preflights >= 2  # the browser asked before each POST with a key header
    finally:
        server.shutdown()
        service.stop()
