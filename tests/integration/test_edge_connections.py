"""The ingest edge against hostile or broken clients, on a real ``python -m ingest_api`` process
driven through raw sockets: malformed header lines that carry a real key (no answer and no log
line of any service holds it), clients that trickle headers or bodies (408, connection closed),
and more body bytes in flight than the process may hold (503 at once, with Retry-After)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from shared.devstack.pipeline import Service, Tenant, TopicTap, start_ingest, start_worker
from shared.runtime.settings import Settings

BODY = b'{"data": {"input": "...", "output": "..."}}'


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def edge(settings: Settings, topics: object, logs: Path) -> Iterator[Service]:
    """An ingest process of this module's own (its log holds only what these tests caused), with
    short read limits and a small in-flight budget."""
    service = start_ingest(
        settings,
        logs,
        HEADER_READ_TIMEOUT_SECONDS="1",
        BODY_READ_TIMEOUT_SECONDS="1.5",
        MAX_INFLIGHT_BYTES=str(1024 * 1024),
    )
    yield service
    service.stop()


def address(service: Service) -> tuple[str, int]:
    url = urllib.parse.urlsplit(service.url)
    assert url.hostname and url.port
    return url.hostname, url.port


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def read_response(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """One HTTP response (head and ``Content-Length`` body) as it came over the wire."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = parse_answer(head)[1].get("content-length", "0")
        return head + await reader.readexactly(int(length))


async def exchange(service: Service, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` on a fresh connection; the response."""
    reader, writer = await asyncio.open_connection(*address(service))
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


def secret_pieces(key: str) -> list[str]:
    """Every 12-character window of the key's random part: a log that holds any of them leaked
    part of the key, whatever was inserted between its characters."""
    secret = key[len("mibo_") :]
    return [secret[i : i + 12] for i in range(len(secret) - 11)]


def assert_no_key(text: str, key: str, where: str) -> None:
    leaked = [piece for piece in secret_pieces(key) if piece in text]
    assert not leaked, f"{where} holds part of the key: {leaked[:3]}"


async def test_malformed_header_lines_never_echo_or_log_the_key(
    settings: Settings, edge: Service, tenant: Tenant, raw_tap: TopicTap, logs: Path
) -> None:
    key = tenant.keys["all"]
    router = start_worker("router_worker", settings, logs)
    storage = start_worker("storage_worker", settings, logs)
    try:
        head = b"POST /public/traces HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
        tail = b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
        bad_lines = {
            "control character after the key": b"x-api-key: " + key.encode() + b"\x01\r\n",
            "DEL after the key": b"x-api-key: " + key.encode() + b"\x7f\r\n",
            "control character inside the key": b"x-api-key: "
            + key[:9].encode()
            + b"\x02"
            + key[9:].encode()
            + b"\r\n",
            "NUL before the key": b"x-api-key: \x00" + key.encode() + b"\r\n",
            "a line over 8190 bytes": b"x-api-key: " + key.encode() + b"A" * 9000 + b"\r\n",
            "the key in a header name": key.encode() + b"\x01: value\r\n",
        }
        for what, bad_line in bad_lines.items():
            reader, writer = await asyncio.open_connection(*address(edge))
            writer.write(head + bad_line + tail)
            raw = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
            writer.close()
            status, headers, body = parse_answer(raw)
            assert status == 400, (what, raw[:300])
            answer = json.loads(body)
            assert answer["success"] is False and answer["timestamp"], what
            assert answer["error"]["code"] == "VALIDATION_ERROR", (what, answer)
            details = answer["error"]["details"]
            assert details and {"type", "msg", "path", "location"} <= set(details[0]), (what, details)
            assert headers["content-type"].startswith("application/json"), what
            assert_no_key(raw.decode("latin-1"), key, f"the answer to {what}")

        # the same key, well formed, goes all the way through: every service logs its work
        external_id = f"edge-{uuid.uuid4().hex}"
        async with aiohttp.ClientSession() as session:
            async with session.post(
                edge.url + "/public/traces",
                data=BODY,
                headers={"x-api-key": key, "x-request-id": external_id, "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 202
        await raw_tap.wait_for(f"{tenant.project_id}:{external_id}".encode())
    finally:
        router.stop()
        storage.stop()
        assert edge.stop() == 0

    service_logs = sorted(await asyncio.to_thread(lambda: list(logs.glob("*.log"))))
    assert {p.name.split("-")[0] for p in service_logs} == {"ingest", "router_worker", "storage_worker"}
    for path in service_logs:
        log_text = path.read_text(errors="replace")
        assert_no_key(log_text, key, path.name)
        for line in log_text.splitlines():  # libraries' lines are JSON like ours
            if line.strip():
                json.loads(line)
    ingest_log = edge.log.read_text()
    refused = [json.loads(line) for line in ingest_log.splitlines() if "malformed request refused" in line]
    # one line, then one more for the repeats of its window, with their count
    assert sum(r.get("repeated", 1) for r in refused) == len(bad_lines), ingest_log[-3000:]
    assert all(r["level"] == "warning" and r["status"] == 400 for r in refused)


async def test_headers_that_never_finish_get_408_and_the_connection_closed(edge: Service) -> None:
    reader, writer = await asyncio.open_connection(*address(edge))
    try:
        writer.write(b"POST /public/traces HTTP/1.1\r\nHost: ingest\r\n")
        started = asyncio.get_running_loop().time()

        async def trickle() -> None:
            for byte in b"X-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)

        sender = asyncio.create_task(trickle())
        raw = await asyncio.wait_for(reader.read(), 10)
        sender.cancel()
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        writer.close()
    status, headers, body = parse_answer(raw)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    assert 0.8 < elapsed < 4, elapsed

    # a connection that never sends anything is closed too, without an answer
    reader, writer = await asyncio.open_connection(*address(edge))
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_idle_keep_alive_connections_are_not_cut_by_the_header_timeout(edge: Service) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(2):
            async with session.get(edge.url + "/healthz") as resp:
                assert resp.status == 200
            await asyncio.sleep(1.5)  # longer than the header timeout, between requests
        async with session.get(edge.url + "/healthz") as resp:
            assert resp.status == 200


async def test_bodies_that_never_finish_get_408_in_the_routes_format(edge: Service, tenant: Tenant) -> None:
    async def slow_chunked(path: str, content_type: str) -> tuple[int, dict[str, str], bytes, float]:
        reader, writer = await asyncio.open_connection(*address(edge))
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: ingest\r\nx-api-key: {tenant.keys['all']}\r\n"
                f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            started = asyncio.get_running_loop().time()

            async def trickle() -> None:
                while True:
                    writer.write(b"1\r\n \r\n")
                    await asyncio.sleep(0.2)

            sender = asyncio.create_task(trickle())
            try:
                raw = await read_response(reader)
            finally:
                sender.cancel()
            return (*parse_answer(raw), asyncio.get_running_loop().time() - started)
        finally:
            writer.close()

    status, _, body, elapsed = await slow_chunked("/public/traces", "application/json")
    assert status == 408 and json.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    assert 1.2 < elapsed < 5, elapsed
    status, headers, body, _ = await slow_chunked("/v1/traces", "application/json")
    assert status == 408 and headers["content-type"] == "application/json"
    assert "not received within" in json.loads(body)["message"]  # google.rpc.Status


async def test_more_body_bytes_than_the_budget_are_refused_at_once(edge: Service, tenant: Tenant) -> None:
    key = tenant.keys["all"]
    size = 700 * 1024  # two of these do not fit the 1 MiB budget
    body = b'{"data": "' + b"x" * (size - 12) + b'"}'
    assert len(body) == size

    def head(length: int | None) -> bytes:
        framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        return (
            f"POST /public/traces HTTP/1.1\r\nHost: ingest\r\nx-api-key: {key}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n"
        ).encode()

    # A holds its reservation: its headers and half its body are in, the rest is still coming
    reader_a, writer_a = await asyncio.open_connection(*address(edge))
    writer_a.write(head(size) + body[: size // 2])
    await writer_a.drain()
    await asyncio.sleep(0.3)

    # B announces a body that does not fit: 503 before it sends a byte of it
    raw = await exchange(edge, head(size), timeout=5)
    status, headers, answer = parse_answer(raw)
    assert status == 503 and headers["retry-after"] == "1", raw[:300]
    assert json.loads(answer)["error"]["code"] == "SERVICE_UNAVAILABLE"

    # C sends chunks without a length: refused once its chunks pass the budget
    reader_c, writer_c = await asyncio.open_connection(*address(edge))
    try:
        writer_c.write(head(None))
        for start in range(0, size, 64 * 1024):
            piece = body[start : start + 64 * 1024]
            writer_c.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer_c.write(b"0\r\n\r\n")
        raw = await read_response(reader_c)
        assert parse_answer(raw)[0] == 503, raw[:300]
    finally:
        writer_c.close()

    # A finishes and is accepted; its reservation is given back, so B's body now fits
    writer_a.write(body[size // 2 :])
    await writer_a.drain()
    raw = await read_response(reader_a)
    writer_a.close()
    assert parse_answer(raw)[0] == 202, raw[:300]
    await asyncio.sleep(0.1)
    raw = await exchange(edge, head(size) + body)
    assert parse_answer(raw)[0] == 202, raw[:300]
