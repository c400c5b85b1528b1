"""``python -m ingest_api``: settings → logging → serve (INGEST_WORKERS processes on one port).

Exit codes: 0 after a complete drain, 1 when something failed (or the drain ran out of time),
2 for a configuration that cannot work, 3 when the port cannot be bound or the app cannot start.
With ``INGEST_WORKERS`` > 1 the parent forks the workers, forwards SIGTERM/SIGINT to them, and
exits with the first non-zero code a worker exited with — after stopping the others, since a
process that cannot serve must not look "up" because its siblings still run.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time

import structlog

from ingest_api.server import serve
from shared.runtime.process import (
    EXIT_BAD_CONFIGURATION,
    EXIT_FAILED,
    ExitWatchdog,
    exit_now,
    service_settings,
)
from shared.runtime.settings import Settings

log = structlog.get_logger("ingest_api")

CHILD_GRACE_SECONDS = 5.0  # past a worker's own shutdown bound, before the parent kills it
PR_SET_PDEATHSIG = 1


def _run_one(settings: Settings, reuse_port: bool) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    watchdog = ExitWatchdog("ingest_api", settings.shutdown_timeout_seconds).install()
    try:
        code = asyncio.run(serve(settings, reuse_port=reuse_port, on_signal=watchdog.arm))
    except Exception as exc:
        log.exception("ingest api failed; exiting", error=repr(exc))
        code = EXIT_FAILED
    watchdog.finished(code)  # whatever still runs (threads, the interpreter's exit) is bounded
    return code


def _stop_with_parent(parent: int) -> None:
    """A forked worker gets SIGTERM when its parent dies (``kill -9`` of the parent): it drains and
    stops like the others, instead of serving on alone (Linux' PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the parent's own exit paths stop the workers
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def _run_many(settings: Settings) -> int:
    """Fork the workers before any event loop exists; forward SIGTERM/SIGINT; wait for all. A
    worker that exits non-zero stops the others, and the parent exits non-zero too."""
    children: dict[int, int] = {}  # pid -> worker number
    parent = os.getpid()
    for number in range(settings.ingest_workers):
        pid = os.fork()
        if pid == 0:
            code = EXIT_FAILED
            try:
                _stop_with_parent(parent)
                code = _run_one(settings, reuse_port=True)
            finally:
                exit_now(code)  # a forked child never returns into the parent's code
        children[pid] = number

    stopping_since: float | None = None

    def stop_all(signum: int = signal.SIGTERM) -> None:
        nonlocal stopping_since
        if stopping_since is None:
            stopping_since = time.monotonic()
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    def forward(signum: int, _frame: object) -> None:
        stop_all(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    kill_after = settings.shutdown_timeout_seconds + CHILD_GRACE_SECONDS
    while children:
        pid, raw = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if stopping_since is not None and time.monotonic() - stopping_since > kill_after:
                log.error(
                    "ingest workers did not stop in time; killing them",
                    pids=sorted(children),
                    timeout_seconds=kill_after,
                )
                stop_all(signal.SIGKILL)
                status = status or EXIT_FAILED
                stopping_since = time.monotonic()
            time.sleep(0.1)
            continue
        if pid not in children:
            continue
        number = children.pop(pid)
        code = _exit_code(raw)
        if code != 0 and stopping_since is None:
            log.error(
                "ingest worker exited; stopping the others",
                worker=number,
                pid=pid,
                exit_code=code,
            )
            stop_all()
        status = status or code
    return status


def main() -> int:
    settings = service_settings("ingest_api")
    if settings is None:
        return EXIT_BAD_CONFIGURATION
    if settings.uses_dev_pepper:
        log.warning("KEY_PEPPER is the built-in development default: set a secret of your own in production")
    if settings.ingest_workers > 1:
        return _run_many(settings)
    return _run_one(settings, reuse_port=True)


if __name__ == "__main__":
    sys.exit(main())
