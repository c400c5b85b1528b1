"""Where the test suite's real Kafka and PostgreSQL come from, in the SPEC §9 order:

1. endpoints given in the environment (``TEST_DATABASE_URL``/``DATABASE_URL`` and
   ``TEST_KAFKA_BOOTSTRAP_SERVERS``/``KAFKA_BOOTSTRAP_SERVERS``);
2. testcontainers, when a Docker engine answers;
3. the project's own local stack (Kafka from Maven Central jars, embedded PostgreSQL), in its own
   folder with free ports, so it never disturbs a ``make run`` stack.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a local stack is started, not by every test run
    from shared.devstack.stack import Stack

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Services:
    database_url: str
    bootstrap: str
    origin: str
    stack: Stack | None = None  # the local stack, for fault tests that restart a component
    extra: dict[str, str] = field(default_factory=dict)


def docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def from_testcontainers() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    with (
        PostgresContainer("postgres:16-alpine", driver=None) as pg,
        KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka,
    ):
        yield Services(pg.get_connection_url(), kafka.get_bootstrap_server(), "testcontainers")


@contextlib.contextmanager
def from_local_stack() -> Iterator[Services]:
    from shared.devstack.stack import Stack

    root = Path(os.environ.get("MIBO_TEST_STACK_DIR", ROOT / ".devstack-test"))
    stack = Stack(root, random_ports=True, cache_dir=ROOT / ".cache")
    clean_env = {k: os.environ.pop(k) for k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    try:
        stack.up(services=False, log=False)
        yield Services(stack.database_url, stack.bootstrap, "local stack", stack=stack)
    finally:
        if not os.environ.get("MIBO_TEST_KEEP_STACK"):
            stack.down(log=False)
        os.environ.update(clean_env)


@contextlib.contextmanager
def provide() -> Iterator[Services]:
    db = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    kafka = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if db and kafka:
        yield Services(db, kafka, "environment")
    elif docker_answers():
        with from_testcontainers() as services:
            yield services
    else:
        with from_local_stack() as services:
            yield services
