"""Serving the app: one or more processes on one port (SO_REUSEPORT), graceful SIGTERM.

aiohttp's automatic request decompression is turned off: ingest_api.content decompresses with a
bound, so a gzip bomb cannot inflate past the body limit.
"""

from __future__ import annotations

import asyncio
import os
import signal

import structlog
from aiohttp import web

from ingest_api.app import create_app
from shared.runtime.settings import Settings

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


async def start(app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> web.AppRunner:
    runner = web.AppRunner(
        app,
        auto_decompress=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        handle_signals=False,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024).start()
    return runner


async def serve_forever(settings: Settings, *, reuse_port: bool) -> None:
    """Run until SIGTERM/SIGINT, then: stop accepting, finish in-flight requests, flush Kafka."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = await start(
        create_app(settings), settings.ingest_host, settings.ingest_port, reuse_port=reuse_port
    )
    log.info("ingest api listening", host=settings.ingest_host, port=settings.ingest_port, pid=os.getpid())
    await stop.wait()
    log.info("draining: no new connections, finishing in-flight requests, flushing the producer")
    await runner.cleanup()
    log.info("stopped")
