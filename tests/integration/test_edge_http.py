"""Bad input through the real ingest process (``python -m ingest_api``, real broker and database):
every malformed body, header, encoding or nesting depth is a precise 4xx in the route's own format
(the Mibo envelope on /public and /admin, google.rpc.Status on /v1/traces), a client that hangs
up is not an error, and 405 answers say what is allowed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import pytest
from google.rpc import code_pb2
from google.rpc.status_pb2 import Status

from ingest_api.body import MAX_JSON_DEPTH
from ingest_api.otlp_decode import MAX_VALUE_DEPTH
from shared.devstack.pipeline import Service, Tenant, metric_value
from shared.runtime.settings import Settings

TRACE, SPAN = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


async def send(
    service: Service,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.request(method, service.url + path, data=body, headers=headers or {}) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def mibo_error(answer: tuple[int, bytes, dict[str, str]], status: int, code: str) -> dict[str, Any]:
    got, raw, headers = answer
    assert got == status, raw[:500]
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    assert body["success"] is False and body["timestamp"] and body["error"]["code"] == code, body
    for detail in body["error"]["details"]:
        assert set(detail) == {"type", "msg", "path", "location"}
    return body["error"]


def rpc_status(answer: tuple[int, bytes, dict[str, str]], status: int, protobuf: bool = False) -> Status:
    got, raw, headers = answer
    assert got == status, raw[:500]
    if protobuf:
        assert headers["Content-Type"] == "application/x-protobuf"
        return Status.FromString(raw)
    assert headers["Content-Type"].startswith("application/json")
    decoded = json.loads(raw)
    return Status(code=decoded.get("code", 0), message=decoded.get("message", ""))


def public(key: str, content_type: str = "application/json") -> dict[str, str]:
    return {"x-api-key": key, "Content-Type": content_type}


def admin_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token}", "Content-Type": "application/json"}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def otlp_json(value: bytes) -> bytes:
    span = b'{"traceId": "%s", "spanId": "%s", "name": "s", "attributes": [{"key": "deep", "value": %s}]}' % (
        TRACE.encode(),
        SPAN.encode(),
        value,
    )
    return b'{"resourceSpans": [{"scopeSpans": [{"spans": [' + span + b"]}]}]}"


def deep_json_value(depth: int) -> bytes:
    return b'{"arrayValue": {"values": [' * depth + b'{"stringValue": "x"}' + b"]}}" * depth


def _field(number: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deep_protobuf(depth: int) -> bytes:
    value = _field(1, b"x")
    for _ in range(depth):
        value = _field(5, _field(1, value))
    span = _field(1, bytes.fromhex(TRACE)) + _field(2, bytes.fromhex(SPAN)) + _field(5, b"s")
    span += _field(9, _field(1, b"deep") + _field(2, value))
    return _field(1, _field(2, _field(2, span)))


def raw_exchange(service: Service, request: bytes, *, hang_up: bool = False) -> bytes:
    """Bytes on a socket, as no well-behaved client library would send them."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if hang_up:
            time.sleep(0.3)  # the server is reading the body by now
            return b""
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


# --------------------------------------------------------------------------------------------------
# Batches


async def test_a_batch_of_only_invalid_items_is_a_207_saying_why(ingest: Service, tenant: Tenant) -> None:
    for items in ([{"data": None}], [{"data": None}, {"spans": []}, 5, {"data": 1, "externalId": "otlp:x"}]):
        status, raw, _ = await send(
            ingest,
            "POST",
            "/public/traces/batch",
            json.dumps({"traces": items}).encode(),
            public(tenant.keys["all"]),
        )
        assert status == 207, raw  # was a 500: nothing to enqueue, and an empty wait on Kafka
        answer = json.loads(raw)
        assert answer["success"] is False
        assert answer["data"]["accepted"] == 0 and answer["data"]["rejected"] == len(items)
        for index, result in enumerate(answer["data"]["results"]):
            assert result["index"] == index and result["status"] == "rejected"
            assert result["error"]["code"] == "VALIDATION_ERROR"
            assert result["error"]["details"][0]["path"].startswith(f"traces[{index}]")


# --------------------------------------------------------------------------------------------------
# Nesting


@pytest.mark.parametrize("depth", [1000, 100_000])
async def test_deep_json_is_a_400_on_every_json_route(
    ingest: Service, tenant: Tenant, settings: Settings, depth: int
) -> None:
    key = tenant.keys["all"]
    deep = nested(depth)
    for path, body in (
        ("/public/traces", b'{"data": ' + deep + b"}"),
        ("/public/traces", b'{"data": 1, "unknown": ' + deep + b"}"),
        ("/public/traces/batch", b'{"traces": [' + deep + b"]}"),
        ("/public/traces/batch", b'{"traces": [{"data": ' + deep + b"}]}"),
    ):
        error = mibo_error(await send(ingest, "POST", path, body, public(key)), 400, "VALIDATION_ERROR")
        assert error["details"][0]["type"] == "too_deep", (path, error)
        assert str(MAX_JSON_DEPTH) in error["details"][0]["msg"]
    error = mibo_error(
        await send(ingest, "POST", "/admin/v1/projects", b'{"name": ' + deep + b"}", admin_headers(settings)),
        400,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["type"] == "too_deep"
    status = rpc_status(
        await send(ingest, "POST", "/v1/traces", b'{"resourceSpans": ' + deep + b"}", public(key)), 400
    )
    assert status.code == code_pb2.INVALID_ARGUMENT and "nested too deeply" in status.message


async def test_deep_otlp_values_are_a_400_in_both_encodings_on_both_routes(
    ingest: Service, tenant: Tenant
) -> None:
    key = tenant.keys["all"]
    for depth in (MAX_VALUE_DEPTH + 1, 450):
        as_json = otlp_json(deep_json_value(depth))
        status = rpc_status(await send(ingest, "POST", "/v1/traces", as_json, public(key)), 400)
        assert "nested too deeply" in status.message
        as_protobuf = deep_protobuf(depth)
        protobuf = public(key, "application/x-protobuf")
        status = rpc_status(
            await send(ingest, "POST", "/v1/traces", as_protobuf, protobuf), 400, protobuf=True
        )
        assert status.code == code_pb2.INVALID_ARGUMENT and "nested too deeply" in status.message
        for body, headers in ((as_json, public(key)), (as_protobuf, protobuf)):
            error = mibo_error(
                await send(ingest, "POST", "/public/traces", body, headers), 400, "VALIDATION_ERROR"
            )
            assert "nested too deeply" in error["message"] + json.dumps(error["details"])
    # at the limit: accepted
    at_limit = otlp_json(deep_json_value(MAX_VALUE_DEPTH))
    got, raw, _ = await send(ingest, "POST", "/v1/traces", at_limit, public(key))
    assert got == 200, raw


# --------------------------------------------------------------------------------------------------
# UTF-8


async def test_invalid_utf8_is_a_400_on_every_json_route(
    ingest: Service, tenant: Tenant, settings: Settings
) -> None:
    key = tenant.keys["all"]
    for path, body in (
        ("/public/traces", b'{"data": {"input": "\xff"}}'),
        ("/public/traces", b'{"data": 1, "comment": "caf\xe9"}'),  # an unknown field: was a 202
        ("/public/traces/batch", b'{"traces": [{"data": "\xc3("}]}'),
        ("/public/traces/batch", b'{"traces": [{"data": 1, "note": "\xed\xa0\x80"}]}'),
    ):
        error = mibo_error(await send(ingest, "POST", path, body, public(key)), 400, "VALIDATION_ERROR")
        assert error["details"][0]["type"] == "utf8_invalid", (path, body, error)
    for body in (b'{"name": "caf\xe9"}', b'{"name": "ok", "x": "\xff"}'):
        error = mibo_error(
            await send(ingest, "POST", "/admin/v1/projects", body, admin_headers(settings)),
            400,
            "VALIDATION_ERROR",
        )
        assert error["details"][0]["type"] == "utf8_invalid"
    broken = otlp_json(b'{"stringValue": "\xff"}')
    status = rpc_status(await send(ingest, "POST", "/v1/traces", broken, public(key)), 400)
    assert "UTF-8" in status.message
    error = mibo_error(
        await send(ingest, "POST", "/public/traces", broken, public(key)), 400, "VALIDATION_ERROR"
    )
    assert error["details"][0]["type"] == "utf8_invalid"


def test_an_admin_authorization_header_that_is_not_utf8_is_a_401(ingest: Service) -> None:
    for token in (b"\xff\xfe", b"test-admin-token\xff", b"\xc3"):
        answer = raw_exchange(
            ingest,
            b"GET /admin/v1/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token
            + b"\r\nConnection: close\r\n\r\n",
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:300]
        assert json.loads(body)["error"]["code"] == "UNAUTHORIZED"


# --------------------------------------------------------------------------------------------------
# Clients that hang up; methods not allowed


async def test_a_client_that_hangs_up_mid_body_is_counted_not_an_error(
    ingest: Service, tenant: Tenant
) -> None:
    closed = {"status": "499", "code": "CLIENT_CLOSED_REQUEST"}
    before = metric_value(ingest, "ingest_requests_total", **closed)
    errors_before = metric_value(ingest, "ingest_requests_total", status="500")
    for path in ("/public/traces", "/public/traces/batch", "/v1/traces"):
        raw_exchange(
            ingest,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {tenant.keys['all']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
            + b'{"data": "only the beginning',
            hang_up=True,
        )
    deadline = time.monotonic() + 10
    while metric_value(ingest, "ingest_requests_total", **closed) < before + 3:
        assert time.monotonic() < deadline, "the hang-ups were not counted as client_closed"
        await asyncio.sleep(0.1)
    assert metric_value(ingest, "ingest_requests_total", status="500") == errors_before
    lines = [json.loads(line) for line in ingest.log.read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("event") == "unhandled error"]
    hung_up = [
        line for line in lines if line.get("event") == "client disconnected before the request was answered"
    ]
    assert len(hung_up) >= 3 and {line["level"] for line in hung_up} == {"info"}
    assert tenant.keys["all"] not in ingest.log.read_text()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/public/traces/batch", {"POST"}),
        ("PUT", "/public/traces", {"GET", "HEAD", "POST"}),
        ("DELETE", "/admin/v1/projects", {"GET", "HEAD", "POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
    ],
)
async def test_405_answers_carry_allow_in_the_envelope(
    ingest: Service, tenant: Tenant, method: str, path: str, allowed: set[str]
) -> None:
    answer = await send(ingest, method, path, headers={"x-api-key": tenant.keys["all"]})
    error = mibo_error(answer, 405, "METHOD_NOT_ALLOWED")
    assert {m.strip() for m in answer[2]["Allow"].split(",")} == allowed
    assert error["details"] and error["details"][0]["type"] == "method_not_allowed"


async def test_405_on_the_otlp_path_is_a_google_rpc_status(ingest: Service) -> None:
    answer = await send(ingest, "GET", "/v1/traces")
    rpc_status(answer, 405)
    assert answer[2]["Allow"] == "POST"
