"""Fixtures of the integration tests beyond the session's (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.runtime.settings import Settings, libpq_url
from storage_worker.database import Database
from storage_worker.write import create_stage


@pytest.fixture
async def traces_db(settings: Settings) -> AsyncIterator[Database]:
    """The storage worker's database edge (with its staging tables), for tests without Kafka."""
    database = Database(libpq_url(settings.database_url), name="test storage", setup=create_stage)
    yield database
    await database.close()
