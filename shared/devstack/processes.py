"""Background processes tracked by pid files: start detached, check alive, stop by process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def running(pidfile: Path, *, expect: str | None = None) -> int | None:
    """The live pid of ``pidfile``. With ``expect``: only when its command line contains it, so a
    pid that an unrelated process reused (after a reboot, say) is not taken for ours; a command
    line that cannot be read passes."""
    pid = read_pid(pidfile)
    if not alive(pid):
        return None
    assert pid is not None
    if expect is not None:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:
            return pid
        if argv and expect not in argv:
            return None
    return pid


def log_size(logfile: Path) -> int:
    """Where a log ends now: what a start appends comes after it."""
    try:
        return logfile.stat().st_size
    except OSError:
        return 0


def log_since(logfile: Path, offset: int) -> str:
    try:
        with open(logfile, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


class PortInUse(SystemExit):
    """A component could not bind its port: another process took it first."""

    def __init__(self, component: str, port: int | None, message: str) -> None:
        super().__init__(message)
        self.component = component
        self.port = port


def start(
    argv: Sequence[str],
    *,
    pidfile: Path,
    logfile: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, output appended to ``logfile``; returns its pid."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(pid: int, *, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Signal ``pid``'s process group (its own session), wait, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        while alive(pid) and time.monotonic() < deadline + 5:
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
