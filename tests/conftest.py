"""Session fixtures: the real broker and database (see tests/services.py), migrated and with a
topic prefix of this run's own, so runs never read each other's messages."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from shared.runtime.settings import Settings, libpq_url
from tests.services import Services, provide

if TYPE_CHECKING:  # the fixtures import these lazily
    from shared.contracts.topics import Topics
    from shared.devstack.pipeline import Service, Tenant, TopicTap

HERE = Path(__file__).resolve().parent
SERVICE_FIXTURES = {"services", "settings", "db", "adb"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``tests/integration``, ``tests/faults`` and ``tests/browser`` need the real broker and database: marked
    ``integration`` (``pytest -m "not integration"`` runs the pure tests alone, in seconds).
    ``tests/unit`` must stay pure: a unit test that reaches for a service fixture is an error."""
    for item in items:
        kind = Path(str(item.path)).relative_to(HERE).parts[0]
        if kind in ("integration", "faults", "browser"):
            item.add_marker(pytest.mark.integration)
        elif kind == "unit":
            used = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
            if used:
                raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(used)}")


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    with provide() as found:
        yield found


@pytest.fixture(scope="session")
def settings(services: Services) -> Settings:
    from shared.db.migrate import upgrade

    upgrade(services.database_url)
    env = {
        **os.environ,
        "DATABASE_URL": services.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap,
        "KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "KAFKA_TOPIC_PARTITIONS": "3",
        "ADMIN_TOKEN": "test-admin-token",
        "KEY_PEPPER": "test-pepper-" + uuid.uuid4().hex,
    }
    return Settings.from_env(env)


@pytest.fixture(scope="session")
async def topics(settings: Settings) -> Topics:
    from shared.runtime.kafka import ensure_topics

    return await ensure_topics(settings)


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
async def adb(settings: Settings) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        yield conn


@pytest.fixture(scope="session")
async def tenant(settings: Settings, topics: Topics) -> Tenant:
    from shared.devstack.pipeline import make_tenant

    return await make_tenant(settings)


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def ingest(settings: Settings, topics: Topics, service_logs: Path) -> Iterator[Service]:
    """``python -m ingest_api`` as a real process on a free port."""
    from shared.devstack.pipeline import start_ingest

    service = start_ingest(settings, service_logs)
    yield service
    service.stop()


@pytest.fixture(scope="session")
async def raw_tap(settings: Settings, topics: Topics) -> AsyncIterator[TopicTap]:
    """Every record of traces.raw of this session, read from the beginning."""
    from shared.devstack.pipeline import TopicTap

    async with TopicTap(settings, topics.raw) as tap:
        yield tap


@pytest.fixture(scope="session")
def router(settings: Settings, topics: Topics, service_logs: Path) -> Iterator[Service]:
    """``python -m router_worker`` as a real process (consumer group of this session's topics)."""
    from shared.devstack.pipeline import start_worker

    service = start_worker("router_worker", settings, service_logs)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def storage(settings: Settings, topics: Topics, service_logs: Path) -> Iterator[Service]:
    """``python -m storage_worker`` as a real process, flushing last-used times every 0.5 s."""
    from shared.devstack.pipeline import start_worker

    service = start_worker(
        "storage_worker", settings, service_logs, LAST_USED_FLUSH_SECONDS="0.5", LOG_LEVEL="debug"
    )
    yield service
    assert service.stop() == 0, service.log.read_text()[-3000:]  # SIGTERM: drained, clean exit


@pytest.fixture(scope="session")
async def routed_tap(settings: Settings, topics: Topics) -> AsyncIterator[TopicTap]:
    """Every record of traces.routed of this session, read from the beginning."""
    from shared.devstack.pipeline import TopicTap

    async with TopicTap(settings, topics.routed) as tap:
        yield tap


@pytest.fixture(scope="session")
async def dlq_tap(settings: Settings, topics: Topics) -> AsyncIterator[TopicTap]:
    """Every record of traces.dlq of this session, read from the beginning."""
    from shared.devstack.pipeline import TopicTap

    async with TopicTap(settings, topics.dlq) as tap:
        yield tap
