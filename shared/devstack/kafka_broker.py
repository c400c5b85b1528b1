"""A single-node KRaft Apache Kafka broker from Maven Central jars.

The jars are fetched once by Maven (``kafka-pom.xml`` beside this file) into a cache folder that
outlives ``dev down`` and is shared by every stack of the checkout; each stack formats its own
log directory and runs ``kafka.Kafka`` with ``java``.
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


@dataclass(frozen=True, slots=True)
class Broker:
    home: Path  # this stack's broker folder: properties, data, pid, log
    jars: Path
    port: int
    controller_port: int

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
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "6",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(16 * 1024 * 1024),
            "replica.fetch.max.bytes": str(16 * 1024 * 1024),
        }
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))

    def java(self, *args: str) -> list[str]:
        return [
            "java", "-Xms256m", "-Xmx512m", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{self.jars}/*", *args,
        ]  # fmt: skip

    def format_storage(self) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(
            self.java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.properties),
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

    def start(self) -> int:
        if pid := self.running():
            return pid
        self.write_properties()
        self.format_storage()
        return processes.start(
            self.java("kafka.Kafka", str(self.properties)),
            pidfile=self.pidfile,
            logfile=self.logfile,
            env=os.environ,
        )


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
