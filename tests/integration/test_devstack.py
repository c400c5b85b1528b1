"""The local stack: process handling, and ``dev up`` never sharing another stack's services.

The integration tests run real stacks (Kafka, PostgreSQL, the three services) through the CLI,
on 127.0.0.1 only. One module-scoped pair, A and B in two folders, is started the hard way: both
folders are seeded with the SAME saved ports and three ``dev up`` start at once (two in A, one in
B). The tests then use the pair for the other situations, A playing the victim and B the foreign
stack, so the module starts two stacks in all (and restarts A's broker twice).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.devstack import kafka_broker, listeners, postgres, processes
from shared.devstack.kafka_broker import kafka_version
from shared.devstack.listeners import Owner
from shared.devstack.stack import ATTEMPTS, DEFAULT_PORTS, Stack
from shared.ops.cli.main import main as cli
from tests.services import ROOT, Services

CACHE = ROOT / ".cache"
ENV = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
ENV["MIBO_CACHE_DIR"] = str(CACHE)
ENV.pop("MIBO_DEVSTACK_DIR", None)


def dev_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "shared.ops.cli.main", "dev", "--dir", str(root), *args]


def dev(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        dev_argv(root, *args), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def status_rows(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in result.stdout.split("\n\n")[0].splitlines():  # the partitions section follows
        name, rest = line.split(None, 1)
        state, _, where = rest.rpartition("  ")
        rows[name] = (state.strip(), where.strip())
    return rows


def held_socket(port: int, *, reuse_port: bool = False) -> socket.socket:
    """A plain listening socket on 127.0.0.1:``port`` (it never answers anything)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old owner's TIME_WAITs
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def answers_as(stack: Stack) -> tuple[str | None, str | None]:
    """(cluster id, data dir) of whatever answers on ``stack``'s saved Kafka and PostgreSQL ports."""
    return (
        kafka_broker.probe(stack.state.ports["kafka"]).identity,
        postgres.probe(stack.state.ports["postgres"]).identity,
    )


def own_identity(stack: Stack) -> tuple[str | None, str]:
    return stack.broker.cluster_id(), str(stack.postgres.pgdata)


# -- without a stack -------------------------------------------------------------------------------
def test_start_running_stop(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "p.pid", tmp_path / "p.log"
    code = "import signal,sys,time; print('hello', flush=True); time.sleep(60)"
    pid = processes.start([sys.executable, "-c", code], pidfile=pidfile, logfile=logfile, env=os.environ)
    assert processes.running(pidfile) == pid
    assert processes.running(pidfile, expect="import signal") == pid
    assert processes.running(pidfile, expect="kafka.Kafka") is None  # alive, but not that process
    deadline = time.monotonic() + 10
    while "hello" not in logfile.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "hello" in logfile.read_text()
    processes.stop(pid, timeout=5)
    assert processes.running(pidfile) is None


def test_status_of_a_stack_never_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert Stack(tmp_path / "none").status() == [("stack", "not created", str((tmp_path / "none").resolve()))]
    assert cli(["dev", "--dir", str(tmp_path / "none"), "status"]) == 1
    assert "`mibo-ingest dev up` creates one" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_listener_owner_tells_ours_shared_and_foreign(tmp_path: Path) -> None:
    """The check behind the services' ports: SO_REUSEPORT lets two processes listen on one port,
    and only /proc tells whose sockets they are."""
    if not listeners.proc_available():
        pytest.skip("needs /proc")
    port = listeners.free_port()
    code = (
        "import socket,sys,time; s=socket.socket(); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('ok', flush=True); time.sleep(60)"
    )
    pidfile, logfile = tmp_path / "l.pid", tmp_path / "l.log"
    assert listeners.owner(port, os.getpid()) is Owner.NOBODY
    pid = processes.start([sys.executable, "-c", code], pidfile=pidfile, logfile=logfile, env=os.environ)
    try:
        deadline = time.monotonic() + 10
        while "ok" not in logfile.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listeners.owner(port, pid) is Owner.OURS
        assert listeners.owner(port, os.getpid()) is Owner.FOREIGN
        assert listeners.describe_listener(port) == listeners.describe(pid)
        with held_socket(port, reuse_port=True):
            assert listeners.owner(port, pid) is Owner.SHARED
    finally:
        processes.stop(pid, timeout=5)


def test_ports_of_an_older_state_file_are_kept_and_secrets_survive_a_new_choice(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    ports = {name: listeners.free_port() for name in DEFAULT_PORTS}
    (root / "state.json").write_text(json.dumps({"ports": ports, "key_pepper": "pepper", "admin_token": "t"}))
    stack = Stack(root)
    assert stack.state.ports == ports and stack.state.key_pepper == "pepper"
    stack._save_state()
    assert "ports" not in json.loads((root / "state.json").read_text())
    assert json.loads((root / "ports.json").read_text()) == ports
    (root / "ports.json").unlink()  # what the one-line fix tells people to do
    assert Stack(root).state.key_pepper == "pepper" and Stack(root).state.ports == {}


def test_a_port_lost_too_often_ends_with_a_one_line_fix(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s", random_ports=True)
    stack._assign_ports()
    occupant = "another PostgreSQL (data dir /x/.devstack/postgres/data; pid 7: postgres -D /x/.devstack/postgres/data)"
    for _ in range(ATTEMPTS):
        stack._move("postgres", lambda _: None, occupant)
    with pytest.raises(SystemExit) as stopped:
        stack._move("postgres", lambda _: None, occupant)
    message = str(stopped.value)
    assert "\n" not in message
    assert f"port {stack.state.ports['postgres']} is taken by another PostgreSQL (data dir /x" in message
    assert "run `mibo-ingest dev --dir /x/.devstack down` there" in message
    assert f"delete {stack.ports_file} to pick new ports" in message


def test_status_reports_the_running_components(services: Services) -> None:
    if services.stack is None:  # services came from the environment or testcontainers
        assert services.origin in {"environment", "testcontainers"}
        return
    assert isinstance(services.stack, Stack)
    rows = {name: (state, where) for name, state, where in services.stack.status()}
    assert rows["kafka"][0].startswith("up (pid") and rows["kafka"][1] == services.bootstrap
    assert rows["postgres"][0].startswith("up (pid") and rows["postgres"][1] == services.database_url


# -- two real stacks -------------------------------------------------------------------------------
@dataclass
class Pair:
    a: Path
    b: Path
    seeded: dict[str, int]
    outputs: dict[str, subprocess.CompletedProcess[str]]

    def stack(self, root: Path) -> Stack:
        return Stack(root, cache_dir=CACHE)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Stacks A and B, started concurrently from the same saved ports (A by two `dev up` at once).

    In the checkout (ignored by git), not under pytest's temporary folder: as root, PostgreSQL
    runs as a user of its own, and any pytest session that starts meanwhile makes
    /tmp/pytest-of-root private again."""
    if not shutil.which("java") or not (shutil.which("mvn") or (CACHE / f"kafka-{kafka_version()}").exists()):
        pytest.skip("the local stack needs Java 17 and Maven (`make tools`)")
    base = Path(tempfile.mkdtemp(prefix=".devstack-test-pair-", dir=ROOT))
    a, b = base / "a" / ".devstack", base / "b" / ".devstack"
    seeded: dict[str, int] = {}
    for name in DEFAULT_PORTS:
        seeded[name] = listeners.free_port(avoid=seeded.values())
    for root in (a, b):
        root.mkdir(parents=True)
        (root / "ports.json").write_text(json.dumps(seeded))
    started = {
        name: subprocess.Popen(
            dev_argv(root, "up"),
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, root in (("a1", a), ("b", b), ("a2", a))
    }
    try:
        outputs = {}
        for name, proc in started.items():
            out, _ = proc.communicate(timeout=300)
            outputs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
        yield Pair(a, b, seeded, outputs)
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
        with ThreadPoolExecutor(2) as pool:  # each waits for its broker's shutdown
            list(pool.map(lambda root: Stack(root, cache_dir=CACHE).down(log=False), (a, b)))
        shutil.rmtree(base, ignore_errors=True)


def test_concurrent_up_in_two_folders_ends_with_two_stacks_on_different_ports(pair: Pair) -> None:
    for name, result in pair.outputs.items():
        assert result.returncode == 0, f"{name}:\n{result.stdout}"
    a, b = pair.stack(pair.a), pair.stack(pair.b)
    assert not set(a.state.ports.values()) & set(b.state.ports.values()), (a.state.ports, b.state.ports)
    together = pair.outputs["a1"].stdout + pair.outputs["a2"].stdout + pair.outputs["b"].stdout
    assert "moving to" in together  # the seeded ports could only be one stack's
    # Each stack answers as itself on its own ports, and the two are different stacks.
    assert answers_as(a) == own_identity(a) and answers_as(b) == own_identity(b)
    assert own_identity(a)[0] != own_identity(b)[0]
    for stack in (a, b):
        env = (stack.root / "env").read_text()
        assert f"127.0.0.1:{stack.state.ports['postgres']}/mibo" in env
        assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{stack.state.ports['kafka']}" in env
        assert f"INGEST_URL=http://127.0.0.1:{stack.state.ports['ingest']}" in env
        result = dev(stack.root, "status")
        assert result.returncode == 0, result.stdout + result.stderr
        rows = status_rows(result)
        assert rows["kafka"] == (f"up (pid {stack.broker.running()})", stack.broker.bootstrap)
        assert rows["postgres"] == (f"up (pid {stack.postgres.pid()})", stack.postgres.url)
        assert rows["ingest_api"] == (f"up (pid {stack._service_pid('ingest_api')})", stack.ingest_url)
        with urllib.request.urlopen(f"{stack.ingest_url}/healthz", timeout=5) as resp:
            assert resp.status == 200


def test_two_up_in_one_folder_take_turns_and_the_second_finds_the_first_stack(pair: Pair) -> None:
    first, second = pair.outputs["a1"].stdout, pair.outputs["a2"].stdout
    if "waiting for the `dev` command" in first:
        first, second = second, first
    assert "waiting for the `dev` command already running in" in second
    for line in ("kafka: already running", "postgres: already running", "ingest_api: already running"):
        assert line in second, second
    assert "kafka: pid" in first and "kafka: pid" not in second  # one broker for folder A


def test_status_exits_non_zero_and_names_a_killed_component(pair: Pair) -> None:
    a = pair.stack(pair.a)
    pid = a._service_pid("router_worker")
    assert pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    result = dev(pair.a, "status")
    assert result.returncode == 1
    assert status_rows(result)["router_worker"][0] == "down"
    assert "not up: router_worker;" in result.stderr
    assert dev(pair.b, "status").returncode == 0  # the other stack is untouched

    result = dev(pair.a, "up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kafka: already running" in result.stdout and "router_worker: pid" in result.stdout
    assert dev(pair.a, "status").returncode == 0


def test_a_service_port_shared_through_so_reuseport_is_not_ours(pair: Pair) -> None:
    """Both services bind with SO_REUSEPORT: a second listener on the port would silently get
    half of the connections. status says so, and up moves the service."""
    a = pair.stack(pair.a)
    port = a.state.ports["router_metrics"]
    with held_socket(port, reuse_port=True):
        result = dev(pair.a, "status")
        assert result.returncode == 1
        assert status_rows(result)["router_worker"][0].startswith(
            f"port {port} shared with pid {os.getpid()}"
        )
        result = dev(pair.a, "up")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"router_metrics: port {port} is taken by pid {os.getpid()}" in result.stdout
    moved = pair.stack(pair.a).state.ports["router_metrics"]
    assert moved != port
    assert dev(pair.a, "status").returncode == 0


def test_saved_ports_taken_by_plain_sockets_while_down_are_given_up(pair: Pair) -> None:
    assert dev(pair.a, "down").returncode == 0
    a = pair.stack(pair.a)
    taken = {name: a.state.ports[name] for name in ("kafka", "postgres", "ingest")}
    held = [held_socket(port) for port in taken.values()]
    try:
        result = dev(pair.a, "status")
        assert result.returncode == 1
        assert status_rows(result)["postgres"][0].startswith(
            f"down; port {taken['postgres']} is taken by pid {os.getpid()}"
        )
        result = dev(pair.a, "up")
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        for sock in held:
            sock.close()
    a = pair.stack(pair.a)
    for name, port in taken.items():
        assert f"{name}: port {port} is taken by pid {os.getpid()}" in result.stdout
        assert a.state.ports[name] != port
    assert answers_as(a) == own_identity(a)
    env = (pair.a / "env").read_text()
    assert f"INGEST_URL=http://127.0.0.1:{a.state.ports['ingest']}" in env
    with urllib.request.urlopen(f"{a.ingest_url}/healthz", timeout=5) as resp:
        assert resp.status == 200
    assert dev(pair.a, "status").returncode == 0


def test_another_stacks_kafka_and_postgres_on_the_saved_ports_are_not_adopted(pair: Pair) -> None:
    """A's Kafka and PostgreSQL are down and its saved ports now belong to B's: A must not use
    them (they answer, but as another cluster and another data dir); it moves, and its running
    services, which were pointed at the old ports, are restarted."""
    a, b = pair.stack(pair.a), pair.stack(pair.b)
    a.postgres.stop()
    kafka_pid = a.broker.running()
    assert kafka_pid
    processes.stop(kafka_pid, timeout=30)
    for name in ("kafka", "kafka_controller", "postgres"):
        a.state.ports[name] = b.state.ports[name]
    a._save_state()
    b_ports = dict(b.state.ports)

    result = dev(pair.a, "status")
    assert result.returncode == 1
    rows = status_rows(result)
    assert rows["kafka"][0].startswith(f"down; port {b_ports['kafka']} is taken by another Kafka broker")
    assert rows["postgres"][0].startswith(f"down; port {b_ports['postgres']} is taken by another PostgreSQL")

    result = dev(pair.a, "up")
    assert result.returncode == 0, result.stdout + result.stderr
    b_cluster, b_data = own_identity(b)
    assert (
        f"kafka: port {b_ports['kafka']} is taken by another Kafka broker (cluster id {b_cluster}"
        in result.stdout
    )
    assert (
        f"postgres: port {b_ports['postgres']} is taken by another PostgreSQL (data dir {b_data}"
        in result.stdout
    )
    assert "ingest_api: restarting pid" in result.stdout  # it ran against the old addresses

    a = pair.stack(pair.a)
    assert answers_as(a) == own_identity(a) != own_identity(b)
    assert pair.stack(pair.b).state.ports == b_ports and answers_as(b) == own_identity(b)
    for stack in (a, b):
        assert dev(stack.root, "status").returncode == 0
