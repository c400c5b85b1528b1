"""``mibo-ingest dev up | down | status | logs``: the whole local stack, managed by pid.

State lives in one folder (``.devstack/`` by default): ``state.json`` (ports, secrets, which
parts are ours), ``env`` (shell-sourceable), and one sub-folder per component with its pid and
log. ``up`` is idempotent: what already runs is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.devstack import processes
from shared.devstack.kafka_broker import Broker, ensure_jars
from shared.devstack.postgres import Postgres

SERVICES = ("ingest_api", "router_worker", "storage_worker")
DEFAULT_PORTS = {
    "kafka": 9092,
    "kafka_controller": 9093,
    "postgres": 55432,
    "ingest": 8080,
    "router_metrics": 9101,
    "storage_metrics": 9102,
}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


@dataclass
class State:
    ports: dict[str, int] = field(default_factory=dict)
    admin_token: str = ""
    key_pepper: str = ""
    external_database_url: str = ""  # set when DATABASE_URL came from the environment
    external_kafka: str = ""  # set when KAFKA_BOOTSTRAP_SERVERS came from the environment
    topic_prefix: str = ""


class Stack:
    def __init__(self, root: Path, *, random_ports: bool = False, cache_dir: Path | None = None) -> None:
        self.root = root.resolve()
        self.random_ports = random_ports
        self.cache_dir = (cache_dir or Path(os.environ.get("MIBO_CACHE_DIR", ".cache"))).resolve()
        self.state = self._load_state()

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    def _load_state(self) -> State:
        try:
            return State(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return State()

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state.__dict__, indent=2) + "\n")
        self.state_file.chmod(0o600)

    def _assign_ports(self) -> None:
        for name, default in DEFAULT_PORTS.items():
            if name in self.state.ports:
                continue
            taken = set(self.state.ports.values())
            port = (
                default
                if not self.random_ports and _port_free(default) and default not in taken
                else free_port()
            )
            self.state.ports[name] = port

    # -- components ----------------------------------------------------------------------------
    @property
    def postgres(self) -> Postgres:
        return Postgres(self.root / "postgres", self.state.ports["postgres"])

    @property
    def broker(self) -> Broker:
        return Broker(
            self.root / "kafka",
            self.cache_dir / f"kafka-{_version()}",
            self.state.ports["kafka"],
            self.state.ports["kafka_controller"],
        )

    @property
    def database_url(self) -> str:
        return self.state.external_database_url or self.postgres.url

    @property
    def bootstrap(self) -> str:
        return self.state.external_kafka or self.broker.bootstrap

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.state.ports['ingest']}"

    def service_env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC_PREFIX": self.state.topic_prefix,
            "INGEST_HOST": "127.0.0.1",
            "INGEST_PORT": str(self.state.ports["ingest"]),
            "INGEST_URL": self.ingest_url,
            "METRICS_HOST": "127.0.0.1",
            "ROUTER_METRICS_PORT": str(self.state.ports["router_metrics"]),
            "STORAGE_METRICS_PORT": str(self.state.ports["storage_metrics"]),
            "ADMIN_TOKEN": self.state.admin_token,
            "KEY_PEPPER": self.state.key_pepper,
        }

    # -- up ------------------------------------------------------------------------------------
    def up(self, *, services: bool = True, log: bool = True) -> dict[str, str]:
        say = _printer(log)
        self.root.mkdir(parents=True, exist_ok=True)
        self._assign_ports()
        self.state.admin_token = self.state.admin_token or secrets.token_urlsafe(24)
        self.state.key_pepper = self.state.key_pepper or secrets.token_urlsafe(32)
        env_db = os.environ.get("DATABASE_URL", "")
        if env_db and env_db != self.postgres.url:
            self.state.external_database_url = env_db
        env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if env_kafka and env_kafka != self.broker.bootstrap:
            self.state.external_kafka = env_kafka
        self._save_state()

        if not self.state.external_kafka:
            say("kafka: fetching broker jars (cached after the first time)")
            ensure_jars(self.cache_dir)
            pid = self.broker.start()
            say(f"kafka: pid {pid} on {self.broker.bootstrap}")
        if not self.state.external_database_url:
            pid = self.postgres.start()
            say(f"postgres: pid {pid} on 127.0.0.1:{self.postgres.port}")

        self._wait_ready(say)
        from shared.db.migrate import upgrade

        upgrade(self.database_url)
        say("database: migrations applied")
        asyncio.run(self._ensure_topics())
        say("kafka: topics ready")
        self._write_env()
        if services:
            self.start_services(say)
        return self.service_env()

    def _wait_ready(self, say, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
        from shared.runtime.kafka import kafka_ready

        deadline = time.monotonic() + timeout
        kafka_ok = db_ok = False
        while time.monotonic() < deadline:
            kafka_ok = kafka_ok or asyncio.run(kafka_ready(self.bootstrap, timeout=3))
            db_ok = db_ok or _db_ready(self.database_url)
            if kafka_ok and db_ok:
                say("kafka and postgres answer")
                return
            if not self.state.external_kafka and not processes.running(self.broker.pidfile):
                raise SystemExit(f"Kafka exited; see {self.broker.logfile}:\n{_tail(self.broker.logfile)}")
            time.sleep(0.5)
        raise SystemExit(f"timed out waiting for kafka={kafka_ok} postgres={db_ok}")

    async def _ensure_topics(self) -> None:
        from shared.runtime.kafka import ensure_topics
        from shared.runtime.settings import Settings

        await ensure_topics(Settings.from_env(os.environ | self.service_env()))

    def _write_env(self) -> None:
        lines = [f"export {k}={_shell_quote(v)}" for k, v in self.service_env().items()]
        self.env_file.write_text(
            "# written by `mibo-ingest dev up`; source it: . .devstack/env\n" + "\n".join(lines) + "\n"
        )
        self.env_file.chmod(0o600)

    def _service_paths(self, name: str) -> tuple[Path, Path]:
        folder = self.root / "services"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.pid", folder / f"{name}.log"

    def start_services(self, say) -> None:  # type: ignore[no-untyped-def]
        env = os.environ | self.service_env() | {"LOG_FORMAT": "json"}
        for name in SERVICES:
            if not service_exists(name):
                say(f"{name}: not built yet, skipped")
                continue
            pidfile, logfile = self._service_paths(name)
            if pid := processes.running(pidfile):
                say(f"{name}: already running, pid {pid}")
                continue
            pid = processes.start([sys.executable, "-m", name], pidfile=pidfile, logfile=logfile, env=env)
            say(f"{name}: pid {pid}, log {logfile}")
        if service_exists("ingest_api"):
            self._wait_http(f"{self.ingest_url}/healthz", say)

    def _wait_http(self, url: str, say, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.3)
        say(f"warning: {url} did not answer within {timeout:.0f}s; see the service logs")

    # -- down / status / logs --------------------------------------------------------------------
    def down(self, *, log: bool = True) -> None:
        say = _printer(log)
        if not self.state.ports:
            say("nothing to stop")
            return
        for name in SERVICES:
            pidfile, _ = self._service_paths(name)
            if pid := processes.running(pidfile):
                processes.stop(pid)
                say(f"{name}: stopped (pid {pid})")
        if not self.state.external_database_url and (pid := self.postgres.pid()):
            self.postgres.stop()
            if self.postgres.pid():
                processes.stop(pid, timeout=5)
            say(f"postgres: stopped (pid {pid})")
        if not self.state.external_kafka and (pid := processes.running(self.broker.pidfile)):
            processes.stop(pid, timeout=30)
            say(f"kafka: stopped (pid {pid})")

    def status(self) -> list[tuple[str, str, str]]:
        """(component, state, where) rows."""
        rows: list[tuple[str, str, str]] = []
        if not self.state.ports:
            return [("stack", "not created", str(self.root))]
        if self.state.external_kafka:
            rows.append(("kafka", "external", self.state.external_kafka))
        else:
            pid = processes.running(self.broker.pidfile)
            rows.append(("kafka", f"up (pid {pid})" if pid else "down", self.broker.bootstrap))
        if self.state.external_database_url:
            rows.append(("postgres", "external", _hide_password(self.state.external_database_url)))
        else:
            pid = self.postgres.pid()
            rows.append(("postgres", f"up (pid {pid})" if pid else "down", self.postgres.url))
        for name in SERVICES:
            pidfile, _ = self._service_paths(name)
            pid = processes.running(pidfile)
            where = {
                "ingest_api": self.ingest_url,
                "router_worker": f"http://127.0.0.1:{self.state.ports.get('router_metrics')}/metrics",
                "storage_worker": f"http://127.0.0.1:{self.state.ports.get('storage_metrics')}/metrics",
            }[name]
            state = f"up (pid {pid})" if pid else ("down" if service_exists(name) else "not built")
            rows.append((name, state, where))
        return rows

    def logfiles(self) -> dict[str, Path]:
        files = {"kafka": self.broker.logfile, "postgres": self.postgres.logfile}
        for name in SERVICES:
            files[name] = self._service_paths(name)[1]
        return files

    def follow(self, names: list[str], lines: int = 50) -> Iterator[str]:
        for name, path in self.logfiles().items():
            if names and name not in names:
                continue
            if path.exists():
                for line in path.read_text(errors="replace").splitlines()[-lines:]:
                    yield f"{name:<15} {line}"


def _version() -> str:
    from shared.devstack.kafka_broker import kafka_version

    return kafka_version()


def _db_ready(url: str) -> bool:
    import psycopg

    from shared.runtime.settings import libpq_url

    try:
        with psycopg.connect(libpq_url(url), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _hide_password(url: str) -> str:
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def _printer(enabled: bool):  # type: ignore[no-untyped-def]
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say
