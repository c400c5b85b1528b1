"""Fault tests kill and restart workers, PostgreSQL and the broker. They get topics (and a tenant)
of their own — these fixtures override the session's of the same names for ``tests/faults`` —
so the session's long-running workers (``router``, ``storage``) never share a consumer group with
the processes these tests kill, and the tests' counts stay exact."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared.contracts.topics import Topics
from shared.devstack.pipeline import Tenant, TopicTap, make_tenant
from shared.runtime.settings import Settings


@pytest.fixture(scope="session")
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, kafka_topic_prefix=f"f{uuid.uuid4().hex[:8]}.")


@pytest.fixture(scope="session")
async def topics(settings: Settings) -> Topics:
    from shared.runtime.kafka import ensure_topics

    return await ensure_topics(settings)


@pytest.fixture(scope="session")
async def tenant(settings: Settings, topics: Topics) -> Tenant:
    return await make_tenant(settings)


@pytest.fixture(scope="session")
async def raw_tap(settings: Settings, topics: Topics) -> AsyncIterator[TopicTap]:
    async with TopicTap(settings, topics.raw) as tap:
        yield tap
