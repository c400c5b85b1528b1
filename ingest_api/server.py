"""Serving the app: one or more processes on one port (SO_REUSEPORT), bounded graceful SIGTERM.

- aiohttp's automatic request decompression is turned off: ingest_api.content decompresses with a
  bound, so a gzip bomb cannot inflate past the body limit.
- ``IngestRequestHandler`` is aiohttp's connection protocol with two changes:
  * a request aiohttp cannot parse (a control character in a header, a line over 8190 bytes,
    a bad request line) is answered with a fixed 400 in Mibo's envelope and logged without the
    offending bytes — aiohttp's own answer and log line quote the raw header line, which may be
    an API key;
  * a request's headers must arrive within ``HEADER_READ_TIMEOUT_SECONDS`` of the connection
    opening (or of the first byte of a later request on a kept-alive connection): a client that
    trickles its headers gets a 408 and its connection closed. (Bodies have their own deadline,
    ``BODY_READ_TIMEOUT_SECONDS``, in ingest_api.content.)
- The listening socket is bound before the app starts: a port that cannot be bound is logged and
  the process exits non-zero at once.
- SIGTERM: stop accepting, give in-flight requests half of ``SHUTDOWN_TIMEOUT_SECONDS``, flush the
  producer, close; the whole drain is bounded by ``SHUTDOWN_TIMEOUT_SECONDS`` (the process-level
  watchdog of shared.runtime.process bounds what follows).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import http_exceptions, web, web_protocol
from aiohttp.web_request import BaseRequest

from ingest_api.app import create_app
from ingest_api.responses import Detail, error_body, json_response
from shared.runtime.process import settle_heap
from shared.runtime.settings import Settings

log = structlog.get_logger(__name__)

EXIT_CANNOT_SERVE = 3  # the port cannot be bound or the app cannot start
# Of SHUTDOWN_TIMEOUT_SECONDS: in-flight requests get half, the whole drain (requests, producer
# flush, pools) 90 %; the process-level watchdog ends the process at 100 %.
REQUEST_GRACE_SHARE = 0.5
DRAIN_SHARE = 0.9


def _parse_error_reason(exc: BaseException | None, max_line: int) -> tuple[str, str]:
    """A fixed sentence for what was wrong with an unparseable request, and where ("header" or
    "request"): never a quote of the request's bytes (aiohttp's message quotes the raw line)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return f"The request line or a header line is longer than {max_line} bytes", "header"
    if isinstance(exc, http_exceptions.InvalidHeader):
        return "A header line is malformed", "header"
    if isinstance(exc, http_exceptions.BadStatusLine):  # BadHttpMethod too
        return "The request line is malformed", "request"
    if isinstance(exc, http_exceptions.InvalidURLError):
        return "The request target is not a valid URL", "request"
    if isinstance(exc, http_exceptions.PayloadEncodingError):
        return "The body does not match its Content-Length or Transfer-Encoding", "body"
    message = getattr(exc, "message", "") or ""
    if isinstance(message, str):
        if message.startswith("Invalid header value char"):
            return "A header value contains a control character", "header"
        if message.startswith(("Invalid header token", "Invalid header name")):
            return "A header name contains an invalid character", "header"
        if message.startswith("Too many headers"):
            return "The request has too many headers", "header"
        if message.startswith("Duplicate"):
            return "A header that may appear once appears twice", "header"
    return "The request is not valid HTTP/1.1", "request"


def _error(status: int, code: str, message: str, details: list[Detail]) -> web.Response:
    response = json_response(error_body(code, message, details), status=status)
    response.force_close()
    return response


class IngestRequestHandler(web_protocol.RequestHandler):
    """aiohttp's HTTP/1.1 protocol with a key-free 400 for unparseable requests and a header
    read timeout (see the module's docstring)."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of the request head being waited for

    # -- header read timeout -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed_before = self._request_count
        idle = self._waiter is not None and not self._waiter.done()  # waiting for a new request
        super().data_received(data)
        if self._request_count != parsed_before:  # a whole request head arrived (or was refused)
            self._disarm_header_timer()
            self._head_bytes = 0
        elif self._header_timer is not None:
            self._head_bytes += len(data)
        elif idle and data:  # the first bytes of a new request on a kept-alive connection
            self._head_bytes = len(data)
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timeout > 0 and self._header_timer is None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        log.warning(
            "request headers not received in time; closing the connection",
            peer=str(peer[0]) if peer else None,
            head_bytes=self._head_bytes,
            timeout_seconds=self._header_timeout,
        )
        if self._head_bytes:
            message = f"The request headers were not received within {self._header_timeout:g} s"
            body = json_response(
                error_body("REQUEST_TIMEOUT", message, [Detail("timeout", message, "", "header")])
            ).body
            assert isinstance(body, bytes)
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.force_close()

    # -- errors aiohttp answers by itself ----------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or whose handler failed outside our
        middleware. Its own version logs the exception (whose message quotes the raw header
        line) and echoes ``message`` in a text/plain body; this one does neither."""
        if status >= 500:
            log.error(
                "request failed outside the application",
                status=status,
                error=type(exc).__name__ if exc else None,
                exc_info=exc if isinstance(exc, BaseException) else None,
            )
        elif not (self._request_count == 1 and isinstance(exc, http_exceptions.BadHttpMethod)):
            # (TLS or other non-HTTP bytes on a fresh connection are internet noise: not logged)
            reason, _ = _parse_error_reason(exc, self.max_field_size)
            log.warning(
                "malformed request refused",
                status=status,
                reason=reason,
                error=type(exc).__name__ if exc else None,
                peer=request.remote,
            )
        if request.writer.output_size > 0:
            raise ConnectionError(
                "Response is sent already, cannot send another response with the error message"
            )
        if status == 400:
            reason, location = _parse_error_reason(exc, self.max_field_size)
            return _error(
                400, "VALIDATION_ERROR", reason, [Detail("malformed_request", reason, "", location)]
            )
        if status == 504:
            message = "The request took too long to handle"
            return _error(504, "GATEWAY_TIMEOUT", message, [Detail("timeout", message, "", "server")])
        if status >= 500:
            message = "Internal server error"
            return _error(status, "INTERNAL_SERVER_ERROR", message, [])
        message = "The request could not be handled"
        return _error(status, "HTTP_ERROR", message, [Detail("http_error", message, "", "request")])


class IngestServer(web.Server):
    """aiohttp's low-level server, making ``IngestRequestHandler`` connections."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> web_protocol.RequestHandler:
        return IngestRequestHandler(
            self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs
        )


class IngestRunner(web.AppRunner):
    """An AppRunner whose server is an ``IngestServer`` (aiohttp has no hook for the protocol class)."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return IngestServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            header_timeout=self._header_timeout,
            **made._kwargs,
        )


def listen_socket(host: str, port: int, *, reuse_port: bool, backlog: int = 1024) -> socket.socket:
    """The bound, listening socket; OSError (address in use, no permission, bad host) right away."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    settings: Settings | None = None,
    sock: socket.socket | None = None,
) -> web.AppRunner:
    settings = settings or Settings.from_env({})
    if sock is None:
        sock = listen_socket(host, port, reuse_port=reuse_port)
    runner = IngestRunner(
        app,
        header_timeout=settings.header_read_timeout_seconds,
        auto_decompress=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_seconds * REQUEST_GRACE_SHARE,
        handle_signals=False,
    )
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        raise
    return runner


async def serve(settings: Settings, *, reuse_port: bool, on_signal: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then: stop accepting, finish in-flight requests, flush Kafka.

    Returns the exit code: 0 after a complete drain, 1 when the drain ran out of time,
    ``EXIT_CANNOT_SERVE`` when the service could not start serving."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
        if on_signal is not None:
            on_signal()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    host, port = settings.ingest_host, settings.ingest_port
    try:
        sock = listen_socket(host, port, reuse_port=reuse_port)
    except OSError as exc:
        log.error("cannot listen on the ingest port; exiting", host=host, port=port, error=str(exc))
        return EXIT_CANNOT_SERVE
    try:
        runner = await start(create_app(settings), host, port, settings=settings, sock=sock)
    except Exception as exc:
        log.exception("ingest api could not start; exiting", error=repr(exc))
        return EXIT_CANNOT_SERVE
    log.info("ingest api listening", host=host, port=port, pid=os.getpid())
    settle_heap()
    await stop.wait()
    log.info("draining: no new connections, finishing in-flight requests, flushing the producer")
    bound = settings.shutdown_timeout_seconds * DRAIN_SHARE
    try:
        async with asyncio.timeout(bound):
            await runner.cleanup()
    except TimeoutError:
        log.error("drain did not finish in time; exiting without it", timeout_seconds=round(bound, 3))
        return 1
    log.info("stopped")
    return 0


async def serve_forever(settings: Settings, *, reuse_port: bool) -> None:
    """``serve``, for callers that do not need its exit code."""
    await serve(settings, reuse_port=reuse_port)
