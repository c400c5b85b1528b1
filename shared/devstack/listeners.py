"""Who listens on a local TCP port: free-port checks, and (on Linux, from ``/proc``) which process
holds a listening socket, so the stack can tell its own listeners from another stack's.

``/proc/net/tcp{,6}`` names every listening socket's inode; ``/proc/<pid>/fd`` links name the
inodes a process holds. Processes of other users cannot be inspected unless we are root: then the
answer is ``None`` ("cannot tell"), never a guess.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


def port_free(port: int) -> bool:
    """True when a listener could bind 127.0.0.1:``port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(avoid: Iterable[int] = ()) -> int:
    """A port the kernel considers free now (another process may still take it before we bind)."""
    avoid = set(avoid)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def proc_available() -> bool:
    return (PROC / "net" / "tcp").exists()


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (any local address, IPv4 or IPv6)."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int] | None:
    """Inodes of the sockets ``pid`` holds; None when its fds cannot be read."""
    inodes: set[int] = set()
    try:
        entries = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return None
    for entry in entries:
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _pids() -> list[int]:
    try:
        return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (what ``processes.start`` launched, with its children)."""
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            # /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                found.append(pid)
    return found or [sid]


def listener_pids(port: int) -> list[int]:
    """Processes holding a socket that listens on ``port`` (those we may inspect)."""
    wanted = listening_inodes(port)
    if not wanted:
        return []
    return [pid for pid in _pids() if (socket_inodes(pid) or set()) & wanted]


class Owner(enum.Enum):
    NOBODY = "nobody listens"
    OURS = "ours"
    SHARED = "shared"  # ours and someone else's (SO_REUSEPORT lets two processes bind one port)
    FOREIGN = "foreign"
    UNKNOWN = "unknown"  # something listens; /proc cannot say whose


def owner(port: int, sid: int) -> Owner:
    """Whether the listeners on ``port`` belong to session ``sid``."""
    if not proc_available():
        return Owner.UNKNOWN
    wanted = listening_inodes(port)
    if not wanted:
        return Owner.NOBODY
    ours: set[int] = set()
    for pid in session_pids(sid):
        ours |= socket_inodes(pid) or set()
    mine = wanted & ours
    if mine == wanted:
        return Owner.OURS
    return Owner.SHARED if mine else Owner.FOREIGN


def cmdline(pid: int) -> list[str]:
    try:
        return [
            a for a in (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0") if a
        ]
    except OSError:
        return []


def environ(pid: int) -> dict[str, str] | None:
    """``pid``'s environment as it started; None when it cannot be read."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def describe(pid: int) -> str:
    """``pid N: <what it runs>``, short, naming the stack folder when it can be told."""
    argv = cmdline(pid)
    root = (environ(pid) or {}).get("MIBO_DEVSTACK_ROOT")
    if "kafka.Kafka" in argv:
        what = " ".join(["kafka.Kafka", *argv[argv.index("kafka.Kafka") + 1 :]])
    elif argv and Path(argv[0]).name == "postgres" and "-D" in argv[:-1]:
        what = f"postgres -D {argv[argv.index('-D') + 1]}"
    elif "-m" in argv[:-1]:
        what = f"python -m {argv[argv.index('-m') + 1]}" + (f" (stack {root})" if root else "")
    else:
        what = " ".join(" ".join(argv).split()) or "?"
    return f"pid {pid}: {what if len(what) <= 100 else what[:97] + '...'}"


def describe_listener(port: int, *, besides: int | None = None) -> str | None:
    """Who listens on ``port``, for a message (leaving out session ``besides``: our own); None when
    it cannot be told."""
    pids = listener_pids(port)
    if besides is not None:
        pids = [pid for pid in pids if pid not in session_pids(besides)]
    if not pids:
        return None
    # The lowest pid is usually the parent (a postmaster, a forking server) rather than a child.
    return describe(min(pids))


def accepts(port: int, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except TimeoutError:
        return True  # a full backlog: something listens
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Answer:
    """What answered on a port: whether anything did and, if it speaks the protocol, who it is
    (a Kafka cluster id, a PostgreSQL data directory)."""

    listening: bool
    identity: str | None = None
    detail: str = ""
