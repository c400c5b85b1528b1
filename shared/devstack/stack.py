"""``mibo-ingest dev up | down | status | logs``: the whole local stack, managed by pid.

State lives in one folder (``.devstack/`` by default): ``ports.json`` (the ports this stack
chose), ``state.json`` (secrets, which parts are external), ``env`` (shell-sourceable), ``lock``,
and one sub-folder per component with its pid and log. ``up`` is idempotent: what already runs is
left running.

Several stacks share one machine (one per checkout, plus the test suite's), so ``up`` never takes
"something answers on my port" for "my component runs": what answers must prove it is this stack's
own. Kafka by its cluster id (``meta.properties`` in this stack's data dir against what the
broker reports in its metadata), PostgreSQL by its data directory (``SHOW data_directory``), the
services by the listening socket belonging to the process of their pid file (``/proc``). A saved
port that something else holds is given up for a new free one (``ports.json`` and ``env`` are
rewritten); a start that loses a race for its port ("Address already in use", or a shared
``SO_REUSEPORT`` listener) is retried on new ports. Two ``up`` in the same folder are serialised
by ``flock`` on ``lock``: the second waits, then finds the first one's stack running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.devstack import kafka_broker, listeners, postgres, processes
from shared.devstack.demo import SAID, Demo, ensure_demo, saved_key
from shared.devstack.files import write_atomic
from shared.devstack.kafka_broker import Broker, ensure_jars
from shared.devstack.listeners import Owner, free_port, port_free
from shared.devstack.postgres import Postgres

SERVICES = ("ingest_api", "router_worker", "storage_worker", "console")
SERVICE_PORTS = {
    "ingest_api": "ingest",
    "router_worker": "router_metrics",
    "storage_worker": "storage_metrics",
    "console": "console",
}
DEFAULT_PORTS = {
    "kafka": 9092,
    "kafka_controller": 9093,
    "postgres": 55432,
    "ingest": 8080,
    "router_metrics": 9101,
    "storage_metrics": 9102,
    "console": 8090,
}
# Variables a service does not read: a change in them is no reason to restart it.
UNREAD = {
    "ingest_api": {"ROUTER_METRICS_PORT", "STORAGE_METRICS_PORT", "CONSOLE_PORT", "CONSOLE_URL"},
    "router_worker": {
        "INGEST_HOST",
        "INGEST_PORT",
        "INGEST_URL",
        "INGEST_WORKERS",
        "STORAGE_METRICS_PORT",
        "CONSOLE_PORT",
        "CONSOLE_URL",
    },
    "storage_worker": {
        "INGEST_HOST",
        "INGEST_PORT",
        "INGEST_URL",
        "INGEST_WORKERS",
        "ROUTER_METRICS_PORT",
        "CONSOLE_PORT",
        "CONSOLE_URL",
    },
    # it reads the ports: its Pipeline page scrapes /metrics
    "console": {"INGEST_HOST", "INGEST_URL", "INGEST_WORKERS"},
}
# Stages that may run several processes in one consumer group (`dev up --routers N
# --storage-workers M`): the first is `router_worker`, the others `router_worker-2`, ... each
# with a metrics port of its own (`router_metrics_2`, ...) in the variable named here.
SCALABLE = {"router_worker": "ROUTER_METRICS_PORT", "storage_worker": "STORAGE_METRICS_PORT"}
ATTEMPTS = 5  # moves of one port in one `up` before it gives up with a one-line fix
ROOT_VAR = "MIBO_DEVSTACK_ROOT"  # set in each service's environment: whose process it is
UP_STATES = ("up (pid", "external", "not built", "not started")  # status rows that are not a problem

Say = Callable[[str], None]
DemoMode = Literal["off", "auto", "on"]

# free_port stays importable from here, where it lived before listeners.py.
__all__ = ["DEFAULT_PORTS", "SERVICES", "Stack", "State", "free_port", "service_exists"]


def service_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


@dataclass
class State:
    ports: dict[str, int] = field(default_factory=dict)  # saved in ports.json, the rest in state.json
    admin_token: str = ""
    key_pepper: str = ""
    external_database_url: str = ""  # set when DATABASE_URL came from the environment
    external_kafka: str = ""  # set when KAFKA_BOOTSTRAP_SERVERS came from the environment
    topic_prefix: str = ""
    services: bool = True  # whether the services belong to the stack (not after `up --no-services`)
    brokers: int = 1  # 1: one combined broker+controller; more: a cluster (shared.devstack.kafka_broker)
    workers: dict[str, int] = field(default_factory=dict)  # processes per SCALABLE stage (default 1)
    ingest_workers: int = 1  # INGEST_WORKERS of the ingest service


class Stack:
    def __init__(self, root: Path, *, random_ports: bool = False, cache_dir: Path | None = None) -> None:
        self.root = root.resolve()
        self.random_ports = random_ports
        self.cache_dir = (cache_dir or Path(os.environ.get("MIBO_CACHE_DIR", ".cache"))).resolve()
        self.state = self._load_state()
        self._moves: dict[str, int] = {}  # per port name, in this `up`
        self.demo: Demo | None = None  # what the last `up` found or made of the demo tenant

    # -- state ---------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    def _load_state(self) -> State:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            data = {}
        ports = data.pop("ports", {})  # stacks created before ports.json kept them here
        with contextlib.suppress(OSError, ValueError):
            ports = json.loads(self.ports_file.read_text())
        known = {f.name for f in dataclasses.fields(State)}
        state = State(**{k: v for k, v in data.items() if k in known})
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            state.ports = {str(name): int(port) for name, port in ports.items()}
        return state

    def _save_state(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        rest = {k: v for k, v in dataclasses.asdict(self.state).items() if k != "ports"}
        write_atomic(self.state_file, json.dumps(rest, indent=2) + "\n", mode=0o600)
        write_atomic(self.ports_file, json.dumps(self.state.ports, indent=2) + "\n", mode=0o644)

    def _assign_ports(self) -> None:
        for name, default in DEFAULT_PORTS.items():
            if name in self.state.ports:
                continue
            taken = set(self.state.ports.values())
            use_default = not self.random_ports and default not in taken and port_free(default)
            self.state.ports[name] = default if use_default else free_port(avoid=taken)
        extra = [f"kafka_{i}" for i in range(2, self.state.brokers + 1)]
        extra += [f"{SERVICE_PORTS[name]}_{i}" for name in SCALABLE for i in range(2, self._count(name) + 1)]
        for name in extra:
            if name not in self.state.ports:
                self.state.ports[name] = free_port(avoid=set(self.state.ports.values()))

    def _move(self, name: str, say: Say, occupant: str | None = None) -> None:
        """Give up port ``name`` (held by ``occupant``) for a new free one and save the choice;
        after ``ATTEMPTS`` moves of one port in one ``up``, stop with a one-line fix instead."""
        old = self.state.ports[name]
        self._moves[name] = self._moves.get(name, 0) + 1
        if self._moves[name] > ATTEMPTS:
            raise SystemExit(self._fix(name, old, occupant or "another process"))
        self.state.ports[name] = free_port(avoid=set(self.state.ports.values()))
        self._save_state()
        if self.env_file.exists():
            self._write_env()
        new = self.state.ports[name]
        if occupant:
            say(f"{name}: port {old} is taken by {occupant}; moving to {new}")
        else:
            say(f"{name}: moving from port {old} to {new} too")

    @contextlib.contextmanager
    def _locked(self, say: Say) -> Iterator[None]:
        """Hold ``lock`` (flock): one ``up``/``down`` at a time in this folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                say(f"waiting for the `dev` command already running in {self.root} (pid {holder})")
                fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            try:
                self.state = self._load_state()  # what the previous holder saved
                yield
            finally:
                fh.seek(0)
                fh.truncate()
                fcntl.flock(fh, fcntl.LOCK_UN)

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
    def nodes(self) -> list[Broker]:
        """Every Kafka process of this stack: the broker, or a cluster's controller and brokers."""
        if self.state.brokers <= 1:
            return [self.broker]
        ports = [self.state.ports["kafka"]] + [
            self.state.ports[f"kafka_{i}"] for i in range(2, self.state.brokers + 1)
        ]
        jars = self.cache_dir / f"kafka-{_version()}"
        return kafka_broker.cluster(
            self.root / "kafka-cluster", jars, ports, self.state.ports["kafka_controller"]
        )

    @property
    def brokers(self) -> list[Broker]:
        """The nodes clients talk to (a cluster's controller only speaks to brokers)."""
        return [node for node in self.nodes if node.roles != "controller"]

    def _count(self, service: str) -> int:
        return max(1, self.state.workers.get(service, 1))

    def instances(self) -> list[str]:
        """Every service process the stack runs: ``router_worker``, ``router_worker-2``, ..."""
        names = []
        for name in SERVICES:
            count = self._count(name) if name in SCALABLE else 1
            names += [name] + [f"{name}-{i}" for i in range(2, count + 1)]
        return names

    def instance_env(self, instance: str) -> dict[str, str]:
        """What one service process gets: the stack's variables, with its own metrics port."""
        env = self.service_env()
        module = _module(instance)
        if module in SCALABLE:
            env[SCALABLE[module]] = str(self.state.ports[_port_key(instance)])
        return env

    @property
    def database_url(self) -> str:
        return self.state.external_database_url or self.postgres.url

    @property
    def bootstrap(self) -> str:
        return self.state.external_kafka or ",".join(b.bootstrap for b in self.brokers)

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.state.ports['ingest']}"

    def service_env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_TOPIC_PREFIX": self.state.topic_prefix,
            "KAFKA_REPLICATION_FACTOR": str(min(3, self.state.brokers)),
            "INGEST_WORKERS": str(self.state.ingest_workers),
            "INGEST_HOST": "127.0.0.1",
            "INGEST_PORT": str(self.state.ports["ingest"]),
            "INGEST_URL": self.ingest_url,
            "METRICS_HOST": "127.0.0.1",
            "ROUTER_METRICS_PORT": str(self.state.ports["router_metrics"]),
            "STORAGE_METRICS_PORT": str(self.state.ports["storage_metrics"]),
            "CONSOLE_PORT": str(self.state.ports["console"]),
            "CONSOLE_URL": f"http://127.0.0.1:{self.state.ports['console']}",
            "ADMIN_TOKEN": self.state.admin_token,
            "KEY_PEPPER": self.state.key_pepper,
        }

    # -- up ------------------------------------------------------------------------------------
    def up(
        self,
        *,
        services: bool = True,
        log: bool = True,
        demo: DemoMode = "off",
        brokers: int | None = None,
        workers: dict[str, int] | None = None,
        ingest_workers: int | None = None,
    ) -> dict[str, str]:
        """Start what is not running and wait until it answers; write ``env``. ``brokers``: one
        broker (1) or a cluster; ``workers``: processes per SCALABLE stage, ``ingest_workers``:
        INGEST_WORKERS — each saved, later ``up`` keep them unless given again. ``demo`` (with
        ``services``): ``auto`` makes the demo tenant on the stack's own PostgreSQL (not on a
        ``DATABASE_URL`` from the environment), ``on`` wherever the database is; what was found or
        made is in ``self.demo`` (see shared.devstack.demo)."""
        say = _printer(log)
        self._moves = {}
        self.demo = None
        with self._locked(say):
            self._scale(say, brokers, workers, ingest_workers)
            self._assign_ports()
            self.state.admin_token = self.state.admin_token or secrets.token_urlsafe(24)
            self.state.key_pepper = self.state.key_pepper or secrets.token_urlsafe(32)
            self._take_external_endpoints(say)
            self.state.services = services or any(self._service_pid(n) for n in self.instances())
            self._save_state()

            kafka_started = None
            cluster_started: list[tuple[Broker, int]] = []
            if not self.state.external_kafka:
                say("kafka: fetching broker jars (cached after the first time)")
                ensure_jars(self.cache_dir)
                if self.state.brokers > 1:
                    cluster_started = self._start_cluster(say)
                else:
                    kafka_started = self._start_kafka(say)
            if not self.state.external_database_url:
                self._ensure_postgres(say)
            if kafka_started:
                self._ensure_kafka(say, kafka_started)
            if cluster_started:
                self._await_cluster(say, cluster_started)
            self._wait_external(say)

            from shared.db.migrate import upgrade

            upgrade(self.database_url)
            say("database: migrations applied")
            asyncio.run(self._ensure_topics())
            say("kafka: topics ready")
            self._write_env()
            if services:
                self.start_services(say)
            if services and demo != "off":
                # auto: made on the stack's own PostgreSQL only, but found wherever `--demo` made it
                create = demo == "on" or not self.state.external_database_url
                self.demo = asyncio.run(
                    ensure_demo(self.root, self.database_url, self.state.key_pepper, create=create)
                )
                say(f"demo: {SAID[self.demo.outcome]}")
            self._write_env()  # a service may have moved; the demo key may be new
        return self.service_env()

    def _take_external_endpoints(self, say: Say) -> None:
        """DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS in the environment are used instead of starting
        PostgreSQL / Kafka, unless they are this stack's own (say, from a sourced ``env`` written
        before the stack moved to other ports)."""
        previous = _read_env(self.env_file)
        env_db = os.environ.get("DATABASE_URL", "")
        own_db = {self.postgres.url} | (
            set() if self.state.external_database_url else {previous.get("DATABASE_URL")}
        )
        if env_db and env_db not in own_db:
            self.state.external_database_url = env_db
        env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        own_kafka = {",".join(b.bootstrap for b in self.brokers)} | (
            set() if self.state.external_kafka else {previous.get("KAFKA_BOOTSTRAP_SERVERS")}
        )
        if env_kafka and env_kafka not in own_kafka:
            self.state.external_kafka = env_kafka
        if self.state.external_kafka:
            say(f"kafka: using {self.state.external_kafka} (KAFKA_BOOTSTRAP_SERVERS), not starting a broker")
        if self.state.external_database_url:
            say(f"postgres: using {_hide_password(self.state.external_database_url)} (DATABASE_URL)")

    # Kafka --------------------------------------------------------------------------------------
    def _start_kafka(self, say: Say) -> tuple[int, int]:
        """This stack's broker started (or found running); (pid, where its log was at the start)."""
        broker = self.broker
        if pid := broker.running():
            ports = broker.listening_ports()
            if ports and ports != (broker.port, broker.controller_port):
                # It runs with the ports of an earlier choice: those are the true ones.
                self.state.ports["kafka"], self.state.ports["kafka_controller"] = ports
                self._save_state()
            say(f"kafka: already running, pid {pid}")
            return pid, processes.log_size(broker.logfile)
        for name in ("kafka", "kafka_controller"):
            if not port_free(self.state.ports[name]):
                self._move(name, say, self._occupant(name))
        broker = self.broker
        offset = processes.log_size(broker.logfile)
        pid = broker.start()
        say(f"kafka: pid {pid} on {broker.bootstrap}")
        return pid, offset

    def _ensure_kafka(self, say: Say, started: tuple[int, int]) -> None:
        """Wait until the broker answers with this stack's cluster id; on a lost port, move and
        start again."""
        while True:
            pid, offset = started
            try:
                self._await_kafka(pid, offset)
                say(f"kafka: answers on {self.broker.bootstrap} (cluster id {self.broker.cluster_id()})")
                return
            except processes.PortInUse as lost:
                processes.stop(pid, timeout=30)
                # Lost a race, most likely to another broker starting, which takes both of its
                # ports: move both.
                for name in ("kafka", "kafka_controller"):
                    port = self.state.ports[name]
                    taken = port == lost.port or not port_free(port)
                    self._move(name, say, self._occupant(name, str(lost)) if taken else None)
            started = self._start_kafka(say)

    def _await_kafka(self, pid: int, offset: int, timeout: float = 120.0) -> None:
        broker = self.broker
        own = broker.cluster_id()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not processes.alive(pid):
                failed = broker.bind_failure(offset)
                if failed is not None:
                    raise processes.PortInUse("kafka", failed, "another process")
                raise SystemExit(
                    f"{_tail(broker.logfile)}\nkafka: exited at start ({_last_error(broker.logfile)}); "
                    f"see {broker.logfile} (`mibo-ingest dev logs kafka`)"
                )
            answer = kafka_broker.probe(broker.port)
            if own and answer.identity == own:
                return
            if answer.identity:  # another cluster holds our port: our broker cannot bind it
                raise processes.PortInUse("kafka", broker.port, f"another Kafka broker ({answer.identity})")
            if answer.listening and listeners.owner(broker.port, pid) is Owner.FOREIGN:
                raise processes.PortInUse("kafka", broker.port, answer.detail)
            time.sleep(0.5)
        raise SystemExit(
            f"kafka: pid {pid} did not answer on {broker.bootstrap} within {timeout:.0f}s; "
            f"see {broker.logfile}, then `mibo-ingest dev down && mibo-ingest dev up`"
        )

    def _scale(
        self, say: Say, brokers: int | None, workers: dict[str, int] | None, ingest_workers: int | None
    ) -> None:
        """Take the sizes asked for (saved in state.json). The number of brokers changes only on a
        stopped stack: a single broker and a cluster keep their data apart, and topics do not move."""
        if brokers is not None and brokers != self.state.brokers:
            if brokers < 1:
                raise SystemExit("--brokers must be at least 1")
            if self.state.ports and any(node.running() for node in self.nodes):
                raise SystemExit(
                    f"kafka: this stack runs {self.state.brokers} broker(s); "
                    f"`mibo-ingest dev down` first, then `dev up --brokers {brokers}`"
                )
            say(f"kafka: {brokers} broker(s) from now on" + (" (a cluster)" if brokers > 1 else ""))
            self.state.brokers = brokers
        for name, count in (workers or {}).items():
            if count < 1:
                raise SystemExit(f"{name}: at least one process")
            self.state.workers[name] = count
        if ingest_workers is not None:
            if ingest_workers < 1:
                raise SystemExit("--ingest-workers must be at least 1")
            self.state.ingest_workers = ingest_workers

    def _start_cluster(self, say: Say) -> list[tuple[Broker, int]]:
        """Start the cluster's nodes that are not running, all formatted with one cluster id;
        (node, where its log was at the start) of those started."""
        nodes = self.nodes
        cluster_id = (
            next((c for c in (n.cluster_id() for n in nodes) if c), None) or kafka_broker.new_cluster_id()
        )
        started = []
        for node in nodes:
            name = _node_name(node)
            if pid := node.running():
                say(f"{name}: already running, pid {pid}")
                continue
            key = _node_port_key(node)
            if not port_free(self.state.ports[key]):
                self._move(key, say, self._occupant(key))
                return self._start_cluster(say)  # ports changed: every node's properties too
            offset = processes.log_size(node.logfile)
            pid = node.start(cluster_id)
            say(
                f"{name}: pid {pid} on 127.0.0.1:{node.port if node.roles == 'broker' else node.controller_port}"
            )
            started.append((node, offset))
        return started

    def _await_cluster(self, say: Say, started: list[tuple[Broker, int]], timeout: float = 120.0) -> None:
        """Wait until every broker answers with the cluster's id."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while True:
                pid = node.running()
                if pid is None:
                    raise SystemExit(
                        f"{_tail(node.logfile)}\n{_node_name(node)}: exited at start "
                        f"({_last_error(node.logfile)}); see {node.logfile}"
                    )
                if node.roles == "controller" or kafka_broker.probe(node.port).identity == node.cluster_id():
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"{_node_name(node)}: pid {pid} did not answer within {timeout:.0f}s; see {node.logfile}"
                    )
                time.sleep(0.5)
        first = self.brokers[0]
        while kafka_broker.registered_brokers(first.port) < len(self.brokers):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"kafka: not all {len(self.brokers)} brokers registered with the controller within "
                    f"{timeout:.0f}s; see {self.nodes[0].logfile}"
                )
            time.sleep(0.5)
        say(
            f"kafka: {len(self.brokers)} brokers answer on {self.bootstrap} (cluster id {self.nodes[0].cluster_id()})"
        )

    # PostgreSQL ---------------------------------------------------------------------------------
    def _ensure_postgres(self, say: Say) -> None:
        restarted = False
        while True:
            pg = self.postgres
            if (pid := pg.pid()) and not restarted:
                port = pg.running_port()
                if port and port != pg.port:  # running on an earlier choice: that is the true one
                    self.state.ports["postgres"] = port
                    self._save_state()
                    pg = self.postgres
                if self._await_own_postgres(pg, timeout=15):
                    say(f"postgres: already running, pid {pid} on 127.0.0.1:{pg.port}")
                    return
                say(f"postgres: pid {pid} does not answer as this stack's PostgreSQL; restarting it")
                pg.stop()
                restarted = True
                continue
            if pid:
                raise SystemExit(f"postgres: pid {pid} does not stop; see {pg.logfile}")
            if not port_free(pg.port):
                self._move("postgres", say, self._occupant("postgres"))
                pg = self.postgres
            try:
                pid = pg.start()
            except processes.PortInUse:
                self._move("postgres", say, self._occupant("postgres"))
                continue
            if not self._await_own_postgres(pg, timeout=15):
                raise SystemExit(f"postgres: pid {pid} started but 127.0.0.1:{pg.port} does not answer as it")
            say(f"postgres: pid {pid} on 127.0.0.1:{pg.port}")
            return

    def _await_own_postgres(self, pg: Postgres, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            answer = postgres.probe(pg.port)
            if answer.identity and _same_path(answer.identity, pg.pgdata):
                return True
            if answer.identity or time.monotonic() > deadline:
                return False
            time.sleep(0.3)

    def _wait_external(self, say: Say, timeout: float = 120.0) -> None:
        """Endpoints given in the environment: wait until they answer (they are not ours to start)."""
        from shared.runtime.kafka import kafka_ready

        deadline = time.monotonic() + timeout
        kafka_ok = not self.state.external_kafka
        db_ok = not self.state.external_database_url
        while not (kafka_ok and db_ok):
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for kafka={kafka_ok} postgres={db_ok}")
            kafka_ok = kafka_ok or asyncio.run(kafka_ready(self.bootstrap, timeout=3))
            db_ok = db_ok or _db_ready(self.database_url)
            if not (kafka_ok and db_ok):
                time.sleep(0.5)
        if self.state.external_kafka or self.state.external_database_url:
            say("external kafka/postgres answer")

    async def _ensure_topics(self) -> None:
        from shared.runtime.kafka import ensure_topics
        from shared.runtime.settings import Settings

        await ensure_topics(Settings.from_env(os.environ | self.service_env()))

    def _write_env(self) -> None:
        """``env``: what the services get, and the demo key (not given to any service) as
        ``MIBO_API_KEY`` for the README's examples."""
        variables = self.service_env()
        if key := saved_key(self.root):
            variables["MIBO_API_KEY"] = key
        lines = [f"export {k}={_shell_quote(v)}" for k, v in variables.items()]
        write_atomic(
            self.env_file,
            "# written by `mibo-ingest dev up`; source it: . .devstack/env\n" + "\n".join(lines) + "\n",
            mode=0o600,
        )

    # services -----------------------------------------------------------------------------------
    def _service_paths(self, name: str) -> tuple[Path, Path]:
        folder = self.root / "services"  # created by processes.start
        return folder / f"{name}.pid", folder / f"{name}.log"

    def _service_pid(self, name: str) -> int | None:
        """The pid of this stack's ``name`` (not a reused pid, not another stack's process)."""
        pidfile = self.root / "services" / f"{name}.pid"
        pid = processes.running(pidfile, expect=f"-m {_module(name)}")
        env = listeners.environ(pid) if pid else None
        if env is not None and env.get(ROOT_VAR, str(self.root)) != str(self.root):
            return None  # another stack's service (started with its own root)
        return pid

    def _stale_settings(self, name: str, pid: int) -> list[str]:
        """Variables whose value in the running service differs from what the stack wants now
        (Kafka or PostgreSQL moved, say); secrets are compared, never printed."""
        env = listeners.environ(pid)
        if env is None:
            return []
        unread = UNREAD[_module(name)]
        return [k for k, v in self.instance_env(name).items() if k not in unread and env.get(k) != v]

    def _surplus(self) -> list[str]:
        """Instances of a scaled-down stage that still run (``router_worker-3`` after ``--routers 2``)."""
        wanted = set(self.instances())
        found = {p.stem for name in SCALABLE for p in (self.root / "services").glob(f"{name}-*.pid")}
        return sorted(found - wanted)

    def start_services(self, say: Say) -> None:
        for name in self._surplus():
            if pid := self._service_pid(name):
                processes.stop(pid)
                say(f"{name}: stopped (pid {pid}), no longer wanted")
        for name in self.instances():
            if not service_exists(_module(name)):
                say(f"{name}: not built yet, skipped")
                continue
            self._ensure_service(name, say)
        if service_exists("ingest_api"):
            self._wait_http(f"{self.ingest_url}/healthz", say)

    def _ensure_service(self, name: str, say: Say) -> None:
        key = _port_key(name)
        pidfile, logfile = self._service_paths(name)
        while True:
            port = self.state.ports[key]
            if pid := self._service_pid(name):
                if stale := self._stale_settings(name, pid):
                    say(f"{name}: restarting pid {pid}, which runs with an older {', '.join(stale)}")
                    processes.stop(pid)
                else:
                    owner = self._await_listener(pid, port, timeout=20)
                    if owner in (Owner.OURS, Owner.UNKNOWN):
                        say(f"{name}: already running, pid {pid}")
                        return
                    say(f"{name}: pid {pid} does not own port {port} ({owner.value}); restarting it")
                    processes.stop(pid)
                    if owner is not Owner.NOBODY:
                        self._move(key, say, self._occupant(key))
                    continue
            if not port_free(port):
                self._move(key, say, self._occupant(key))
            inherited = {k: v for k, v in os.environ.items() if k != "MIBO_API_KEY"}  # from a sourced env
            env = inherited | self.instance_env(name) | {"LOG_FORMAT": "json", ROOT_VAR: str(self.root)}
            offset = processes.log_size(logfile)
            argv = [sys.executable, "-m", _module(name)]
            pid = processes.start(argv, pidfile=pidfile, logfile=logfile, env=env)
            owner = self._await_listener(pid, self.state.ports[key], timeout=30)
            if owner in (Owner.OURS, Owner.UNKNOWN):
                say(f"{name}: pid {pid} on port {self.state.ports[key]}, log {logfile}")
                return
            if not processes.alive(pid):
                text = processes.log_since(logfile, offset)
                if "address already in use" not in text.lower():
                    raise SystemExit(
                        f"{text[-2000:]}\n{name}: exited at start ({_last_line(text)}); "
                        f"see {logfile}, fix it and run `mibo-ingest dev up` again"
                    )
                self._move(key, say, self._occupant(key))
                continue
            processes.stop(pid)
            if owner is Owner.NOBODY:
                port = self.state.ports[key]
                raise SystemExit(f"{name}: pid {pid} did not listen on port {port} within 30s; see {logfile}")
            # SO_REUSEPORT let it bind beside another process: never share, move.
            self._move(key, say, self._occupant(key))

    def _await_listener(self, pid: int, port: int, timeout: float) -> Owner:
        """Wait until ``pid``'s session listens on ``port``; how it ends (OURS, SHARED, FOREIGN;
        NOBODY on timeout or exit; UNKNOWN without /proc, once the port accepts connections)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and processes.alive(pid):
            owner = listeners.owner(port, pid)
            # FOREIGN: someone else listens and ours does not (yet); it will fail, or share the port.
            if owner in (Owner.OURS, Owner.SHARED, Owner.FOREIGN):
                return owner
            if owner is Owner.UNKNOWN and listeners.accepts(port):
                return owner
            time.sleep(0.2)
        return Owner.NOBODY

    def _wait_http(self, url: str, say: Say, timeout: float = 30.0) -> None:
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

    # messages -----------------------------------------------------------------------------------
    def _occupant(self, name: str, fallback: str = "another process") -> str:
        """Who holds port ``name`` now, as precisely as can be told."""
        port = self.state.ports[name]
        process = listeners.describe_listener(port)
        answer = None
        # Ask the protocol who it is unless /proc already says it is some other kind of process
        # (a probe of something that never answers costs its whole timeout).
        if name == "kafka" and (process is None or "kafka.Kafka" in process):
            answer = kafka_broker.probe(port)
        elif name == "postgres" and (process is None or "postgres" in process):
            answer = postgres.probe(port)
        if answer and answer.identity:
            kind = "Kafka broker (cluster id" if name == "kafka" else "PostgreSQL (data dir"
            return f"another {kind} {answer.identity}" + (f"; {process})" if process else ")")
        if process:
            return process
        if answer and answer.listening and answer.detail:
            return answer.detail
        return fallback

    def _fix(self, name: str, port: int, occupant: str) -> str:
        """The one line ``up`` ends with when it cannot get a port for ``name``."""
        other = _stack_root_in(occupant)
        stop = f"run `mibo-ingest dev --dir {other} down` there" if other else "stop it"
        return (
            f"{name}: port {port} is taken by {occupant} ({ATTEMPTS} other ports were lost too); "
            f"{stop}, or delete {self.ports_file} to pick new ports"
        )

    # -- down / status / logs --------------------------------------------------------------------
    def down(self, *, log: bool = True) -> None:
        say = _printer(log)
        if not self.state.ports and not self.ports_file.exists() and not self.state_file.exists():
            say("nothing to stop")
            return
        with self._locked(say):
            if not self.state.ports:
                say("nothing to stop")
                return
            for name in self.instances() + self._surplus():
                if pid := self._service_pid(name):
                    processes.stop(pid)
                    say(f"{name}: stopped (pid {pid})")
            if not self.state.external_database_url and (pid := self.postgres.pid()):
                self.postgres.stop()
                if self.postgres.pid():
                    processes.stop(pid, timeout=5)
                say(f"postgres: stopped (pid {pid})")
            if not self.state.external_kafka:
                for node in reversed(self.nodes):  # brokers first, the controller last
                    if pid := node.running():
                        processes.stop(pid, timeout=30)
                        say(f"{_node_name(node)}: stopped (pid {pid})")
            self.state.services = False
            self._save_state()

    def status(self) -> list[tuple[str, str, str]]:
        """(component, state, where) rows; a state that starts with one of ``UP_STATES`` is fine."""
        rows: list[tuple[str, str, str]] = []
        if not self.state.ports:
            return [("stack", "not created", str(self.root))]
        if self.state.external_kafka:
            rows.append(("kafka", "external", self.state.external_kafka))
        elif self.state.brokers > 1:
            for node in self.nodes:
                where = (
                    f"127.0.0.1:{node.controller_port} (controller)"
                    if node.roles == "controller"
                    else node.bootstrap
                )
                rows.append((_node_name(node), self._node_status(node), where))
        else:
            rows.append(("kafka", self._kafka_status(), self.broker.bootstrap))
        if self.state.external_database_url:
            rows.append(("postgres", "external", _hide_password(self.state.external_database_url)))
        else:
            rows.append(("postgres", self._postgres_status(), self.postgres.url))
        for name in self.instances():
            where = {
                "ingest_api": self.ingest_url,
                "router_worker": f"http://127.0.0.1:{self.state.ports.get(_port_key(name))}/metrics",
                "storage_worker": f"http://127.0.0.1:{self.state.ports.get(_port_key(name))}/metrics",
                "console": f"http://127.0.0.1:{self.state.ports.get('console')}",
            }[_module(name)]
            rows.append((name, self._service_status(name), where))
        return rows

    @staticmethod
    def problems(rows: list[tuple[str, str, str]]) -> list[str]:
        """Components of ``status()`` rows that are down, or up but not answering as themselves."""
        return [name for name, state, _ in rows if not state.startswith(UP_STATES)]

    def _kafka_status(self) -> str:
        broker = self.broker
        if not (pid := broker.running()):
            return self._down("kafka")
        answer = kafka_broker.probe(broker.port)
        if answer.identity and answer.identity == broker.cluster_id():
            return f"up (pid {pid})"
        if answer.identity:
            return f"not answering (pid {pid}); port {broker.port} answers as cluster {answer.identity}"
        return f"not answering (pid {pid})"

    def _node_status(self, node: Broker) -> str:
        if not (pid := node.running()):
            return "down"
        if node.roles == "controller":
            return f"up (pid {pid})"
        answer = kafka_broker.probe(node.port)
        if answer.identity and answer.identity == node.cluster_id():
            return f"up (pid {pid})"
        return f"not answering (pid {pid})"

    def assignments(self, timeout: float = 10.0) -> dict[str, list[str]]:
        """Each consuming service process and the partitions its consumer holds now, by group:
        ``{"router_worker (pid 123)": ["traces.raw: 0,1,2"], ...}``, from the groups'
        descriptions (describe_consumer_groups; a consumer's client id ends with its pid)."""
        from shared.runtime.kafka import describe_groups

        prefix = self.state.topic_prefix
        groups = [f"{prefix}{stage}" for stage in ("router_worker", "storage_worker", "dlq_index_worker")]
        members = asyncio.run(describe_groups(self.bootstrap, groups, timeout))
        pids = {self._service_pid(name): name for name in self.instances()}
        held: dict[str, list[str]] = {}
        for group, client_id, partitions in members:
            pid_text = client_id.rpartition("-")[2]
            pid = int(pid_text) if pid_text.isdigit() else None
            who = f"{pids.get(pid, 'process')} (pid {pid})" if pid else client_id
            where = "; ".join(
                f"{topic}: {','.join(map(str, sorted(p)))}" for topic, p in sorted(partitions.items())
            )
            held.setdefault(who, []).append(f"{group.removeprefix(prefix)} → {where or 'none'}")
        return held

    def _postgres_status(self) -> str:
        pg = self.postgres
        if not (pid := pg.pid()):
            return self._down("postgres")
        answer = postgres.probe(pg.port)
        if answer.identity and _same_path(answer.identity, pg.pgdata):
            return f"up (pid {pid})"
        if answer.identity:
            return f"not answering (pid {pid}); port {pg.port} answers with data dir {answer.identity}"
        return f"not answering (pid {pid})"

    def _service_status(self, name: str) -> str:
        if not service_exists(_module(name)):
            return "not built"
        if not (pid := self._service_pid(name)):
            return self._down(_port_key(name)) if self.state.services else "not started"
        port = self.state.ports[_port_key(name)]
        owner = listeners.owner(port, pid)
        if owner is Owner.OURS or (owner is Owner.UNKNOWN and listeners.accepts(port)):
            return f"up (pid {pid})"
        if owner is Owner.NOBODY or owner is Owner.UNKNOWN:
            return f"not listening (pid {pid})"
        other = listeners.describe_listener(port, besides=pid) or "another process"
        return f"port {port} {owner.value} with {other} (ours: pid {pid})"

    def _down(self, name: str) -> str:
        """``down``, and who holds the saved port meanwhile (``up`` will move to another)."""
        port = self.state.ports[name]
        return "down" if port_free(port) else f"down; port {port} is taken by {self._occupant(name)}"

    def logfiles(self) -> dict[str, Path]:
        # Not through self.broker / self.postgres: those need ports, and a stack never started has none.
        files = {
            "kafka": self.root / "kafka" / "kafka.log",
            "postgres": self.root / "postgres" / "postgres.log",
        }
        for folder in sorted((self.root / "kafka-cluster").glob("*")):
            files[f"kafka-{folder.name}"] = folder / "kafka.log"
        for name in self.instances():
            files[name] = self._service_paths(name)[1]
        return files

    def follow(self, names: list[str], lines: int = 50, *, raw: bool = False) -> Iterator[str]:
        """The last ``lines`` of each component's log, prefixed with its name unless ``raw``."""
        for name, path in self.logfiles().items():
            if names and name not in names:
                continue
            if path.exists():
                for line in path.read_text(errors="replace").splitlines()[-lines:] if lines > 0 else []:
                    yield line if raw else f"{name:<15} {line}"


def _module(instance: str) -> str:
    """The service an instance runs: ``router_worker-2`` → ``router_worker``."""
    return instance.partition("-")[0]


def _port_key(instance: str) -> str:
    """The port name of an instance: ``router_worker`` → ``router_metrics``, ``-2`` → ``router_metrics_2``."""
    module, _, number = instance.partition("-")
    return SERVICE_PORTS[module] + (f"_{number}" if number else "")


def _node_name(node: Broker) -> str:
    return "kafka-controller" if node.roles == "controller" else f"kafka-{node.node_id}"


def _node_port_key(node: Broker) -> str:
    if node.roles == "controller":
        return "kafka_controller"
    return "kafka" if node.node_id == 1 else f"kafka_{node.node_id}"


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


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _stack_root_in(text: str) -> str | None:
    """The state folder of another stack named in a description (its data dir or properties)."""
    match = re.search(r"(/[^\s;()]+?)/(?:postgres/data|kafka/server\.properties)\b", text)
    if match:
        return match.group(1)
    match = re.search(r"\(stack (/[^\s;()]+)\)", text)
    return match.group(1) if match else None


def read_new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """The complete lines written to ``path`` since byte ``offset``, and the offset after them. A
    line still being written stays for the next call (a JSON line is never printed in two halves);
    a file that shrank (truncated, replaced) is read again from its start."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, os.SEEK_END) < offset:
                offset = 0
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    return complete.decode(errors="replace").splitlines(), offset + len(complete)


def _read_env(path: Path) -> dict[str, str]:
    """The variables an ``env`` file of ours exports."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                with contextlib.suppress(ValueError):
                    found[key] = " ".join(shlex.split(value))
    return found


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _last_error(path: Path) -> str:
    lines = _tail(path, 200).splitlines()
    errors = [line for line in lines if " ERROR " in line or "Exception" in line]
    return (errors or lines or ["no log"])[-1].strip()[:200]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "no output"


def _hide_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _shell_quote(value: str) -> str:
    return shlex.quote(value)


def _printer(enabled: bool) -> Say:
    def say(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return say
