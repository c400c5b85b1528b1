"""KRaft Apache Kafka nodes from Maven Central jars: one combined broker+controller (the default
stack), or a cluster of brokers with a controller of their own (``dev up --brokers 3``).

The jars are fetched once by Maven (``kafka-pom.xml`` beside this file) into a cache folder that
outlives ``dev down`` and is shared by every stack of the checkout; each node formats its own
log directory and runs ``kafka.Kafka`` with ``java``.

A cluster is N broker-only nodes (ids 1..N) and one controller-only node (id 0). Why not three
combined nodes: the fault scenarios kill two of three brokers to push partitions below
``min.insync.replicas``; with combined nodes that also kills the controller quorum's majority, and
then no ISR can shrink and no leader can move — a different fault (the metadata plane gone), which
shows up as timeouts, never as ``NotEnoughReplicas``. One controller is a single point of failure
for metadata changes (not for produce/fetch while leaders stay put); production runs three.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.devstack import processes
from shared.devstack.listeners import Answer, accepts

HERE = Path(__file__).parent
POM = HERE / "kafka-pom.xml"
LOG4J = HERE / "log4j2.properties"


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert match, "kafka-pom.xml declares kafka.version"
    return match.group(1)


def ensure_jars(cache_dir: Path) -> Path:
    """Fetch the broker's runtime jars into ``cache_dir/kafka-<version>`` unless already there."""
    target = cache_dir / f"kafka-{kafka_version()}"
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit(
            "Maven (mvn) is needed to fetch the Kafka broker jars; install it or set KAFKA_BOOTSTRAP_SERVERS"
        )
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"Maven could not fetch the Kafka jars:\n{proc.stdout}\n{proc.stderr}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    marker.write_text(kafka_version() + "\n")
    return target


def new_cluster_id() -> str:
    """22 characters of base64url: 16 random bytes, as ``kafka-storage random-uuid`` makes them."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Broker:
    home: Path  # this stack's broker folder: properties, data, pid, log
    jars: Path
    port: int  # PLAINTEXT (clients); unused by a controller-only node
    controller_port: int  # CONTROLLER: this node's own for a controller, the quorum's for a broker
    node_id: int = 1
    roles: str = "broker,controller"  # "broker" / "controller" in a cluster
    voters: str = ""  # controller.quorum.voters of a cluster; empty: a standalone single node
    replicas: int = 1  # replication of the internal topics; min ISR is replicas - 1 (at least 1)
    heap_mb: int = 512

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def logfile(self) -> Path:
        return self.home / "kafka.log"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    def write_properties(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        plain = f"PLAINTEXT://127.0.0.1:{self.port}"
        ctrl = f"CONTROLLER://127.0.0.1:{self.controller_port}"
        if self.roles == "broker":
            listeners = [plain]
        elif self.roles == "controller":
            listeners = [ctrl]
        else:
            listeners = [plain, ctrl]
        min_isr = str(max(1, self.replicas - 1))
        quorum = (
            {"controller.quorum.voters": self.voters}
            if self.voters
            else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"}
        )
        lines = {
            "process.roles": self.roles,
            "node.id": str(self.node_id),
            **quorum,
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "6",
            "default.replication.factor": str(self.replicas),
            "min.insync.replicas": min_isr,
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": str(self.replicas),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(self.replicas),
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": str(self.replicas),
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(16 * 1024 * 1024),
            "replica.fetch.max.bytes": str(16 * 1024 * 1024),
        }
        if self.roles != "controller":
            lines["inter.broker.listener.name"] = "PLAINTEXT"
        if self.voters:
            # A killed broker is fenced (and leaves every ISR) after this long without heartbeats.
            lines["broker.session.timeout.ms"] = "6000"
            lines["broker.heartbeat.interval.ms"] = "1000"
            lines["replica.lag.time.max.ms"] = "10000"
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))

    def java(self, *args: str) -> list[str]:
        return [
            "java", f"-Xms{min(256, self.heap_mb)}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{self.jars}/*", *args,
        ]  # fmt: skip

    def format_storage(self, cluster_id: str | None = None) -> None:
        """Format the log directory once; a cluster's nodes share ``cluster_id``."""
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = cluster_id or new_cluster_id()
        standalone = [] if self.voters else ["--standalone"]
        subprocess.run(
            self.java(
                "kafka.tools.StorageTool", "format", *standalone, "-t", cluster_id, "-c", str(self.properties)
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def cluster_id(self) -> str | None:
        """This broker's cluster id, from the ``meta.properties`` its storage was formatted with."""
        try:
            text = (self.home / "data" / "meta.properties").read_text()
        except OSError:
            return None
        match = re.search(r"^cluster\.id=(\S+)", text, re.MULTILINE)
        return match.group(1) if match else None

    def running(self) -> int | None:
        """The pid of this stack's broker (a java process started with this folder's properties)."""
        return processes.running(self.pidfile, expect=str(self.properties))

    def listening_ports(self) -> tuple[int, int] | None:
        """(port, controller port) the running broker was started with, from its properties."""
        try:
            text = self.properties.read_text()
        except OSError:
            return None
        plain = re.search(r"^listeners=.*PLAINTEXT://[^:,]+:(\d+)", text, re.MULTILINE)
        ctrl = re.search(r"^listeners=.*CONTROLLER://[^:,]+:(\d+)", text, re.MULTILINE)
        return (int(plain.group(1)), int(ctrl.group(1))) if plain and ctrl else None

    def bind_failure(self, log_offset: int) -> int | None:
        """The port this broker could not bind, from what its log says after ``log_offset``."""
        text = processes.log_since(self.logfile, log_offset)
        match = re.search(r"failed to bind to [^\s:]+:(\d+): Address already in use", text)
        if match:
            return int(match.group(1))
        return -1 if "Address already in use" in text else None

    def start(self, cluster_id: str | None = None) -> int:
        if pid := self.running():
            return pid
        self.write_properties()
        self.format_storage(cluster_id)
        return processes.start(
            self.java("kafka.Kafka", str(self.properties)),
            pidfile=self.pidfile,
            logfile=self.logfile,
            env=os.environ,
        )


def cluster(home: Path, jars: Path, broker_ports: list[int], controller_port: int) -> list[Broker]:
    """The nodes of a cluster of ``len(broker_ports)`` brokers: its controller first (node 0),
    then brokers 1..N. Internal topics get min(3, N) replicas; small heaps (2-core machines)."""
    voters = f"0@127.0.0.1:{controller_port}"
    replicas = min(3, len(broker_ports))
    controller = Broker(
        home / "controller", jars, 0, controller_port,
        node_id=0, roles="controller", voters=voters, replicas=replicas, heap_mb=192,
    )  # fmt: skip
    brokers = [
        Broker(
            home / f"broker-{i}",
            jars,
            port,
            controller_port,
            node_id=i,
            roles="broker",
            voters=voters,
            replicas=replicas,
            heap_mb=384,
        )
        for i, port in enumerate(broker_ports, 1)
    ]
    return [controller, *brokers]


def probe(port: int, timeout: float = 2.0) -> Answer:
    """Ask whatever listens on 127.0.0.1:``port`` for Kafka metadata; its cluster id is who it is."""
    if not accepts(port):
        return Answer(False)

    async def ask() -> str | None:
        from aiokafka.conn import create_conn
        from aiokafka.protocol.metadata import MetadataRequest

        conn = await create_conn("127.0.0.1", port, request_timeout_ms=int(timeout * 1000))
        try:
            metadata = await conn.send(MetadataRequest([]))
        finally:
            conn.close()
        return getattr(metadata, "cluster_id", None)

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        cluster = asyncio.run(asyncio.wait_for(ask(), timeout))
    except Exception as exc:
        return Answer(True, None, f"something that does not answer as a Kafka broker ({type(exc).__name__})")
    finally:
        quiet.setLevel(level)
    return Answer(True, cluster, f"a Kafka broker with cluster id {cluster}")


def registered_brokers(port: int, timeout: float = 3.0) -> int:
    """How many brokers the broker on 127.0.0.1:``port`` knows as registered (and unfenced): its
    metadata's broker list. A cluster's broker answers before the others have registered; topics
    with 3 replicas can be created only once all have (0 when nothing answers)."""

    async def ask() -> int:
        from aiokafka.conn import create_conn
        from aiokafka.protocol.metadata import MetadataRequest

        conn = await create_conn("127.0.0.1", port, request_timeout_ms=int(timeout * 1000))
        try:
            metadata = await conn.send(MetadataRequest([]))
        finally:
            conn.close()
        return len(metadata.brokers)

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(asyncio.wait_for(ask(), timeout))
    except Exception:
        return 0
    finally:
        quiet.setLevel(level)
