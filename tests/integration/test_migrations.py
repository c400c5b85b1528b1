"""Migrations against the real PostgreSQL: a scratch database goes up, down and up again, and a
row round-trips through every table."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.db import migrate
from shared.runtime.settings import Settings, libpq_url


@pytest.fixture
def scratch_db(settings: Settings) -> Iterator[str]:
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    admin_url = libpq_url(settings.database_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_upgrade_downgrade_upgrade(scratch_db: str) -> None:
    migrate.upgrade(scratch_db)
    assert migrate.current(scratch_db) is not None
    migrate.downgrade(scratch_db, "base")
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT to_regclass('traces')").fetchone() == (None,)
    migrate.upgrade(scratch_db)
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT to_regclass('traces')").fetchone() == ("traces",)


def test_row_round_trip_through_every_table(db: psycopg.Connection) -> None:
    project, platform, key, trace = (uuid.uuid4() for _ in range(4))
    received = dt.datetime.now(dt.UTC)
    body = {"spans": [{"span_id": "a", "name": "root", "attributes": {"k": [1, 2.5, None]}}]}
    with db.transaction():
        db.execute("INSERT INTO projects (id, name) VALUES (%s, %s)", (project, f"p-{project}"))
        db.execute(
            "INSERT INTO platforms (id, project_id, name, type, workflow_id) VALUES (%s, %s, 'n8n prod', 'n8n', 'wf-1')",
            (platform, project),
        )
        db.execute(
            "INSERT INTO api_keys (id, project_id, name, key_hash, last4, restricted) VALUES (%s, %s, 'k', %s, 'abcd', true)",
            (key, project, b"\x01" * 32),
        )
        db.execute("INSERT INTO api_key_platforms VALUES (%s, %s)", (key, platform))
        db.execute(
            """INSERT INTO traces (id, project_id, platform_id, api_key_id, external_id, body_shape, payload,
                                   metadata, received_at) VALUES (%s, %s, %s, %s, 'ext-1', 'spans', %s, %s, %s)""",
            (trace, project, platform, key, Jsonb(body), Jsonb({"workflowId": "wf-1"}), received),
        )
    row = db.execute(
        "SELECT platform_id, external_id, payload, metadata, received_at FROM traces WHERE id = %s",
        (trace,),
    ).fetchone()
    assert row == (platform, "ext-1", body, {"workflowId": "wf-1"}, received)
    scope = db.execute("SELECT platform_id FROM api_key_platforms WHERE api_key_id = %s", (key,)).fetchall()
    assert scope == [(platform,)]

    # SPEC §2: a routing identifier is unique within its project and type.
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO platforms (id, project_id, name, type, workflow_id) VALUES (%s, %s, 'other', 'n8n', 'wf-1')",
            (uuid.uuid4(), project),
        )
    # ... and belongs to its own platform type only.
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO platforms (id, project_id, name, type, workflow_id) VALUES (%s, %s, 'f', 'flowise', 'wf-2')",
            (uuid.uuid4(), project),
        )
    db.execute("DELETE FROM projects WHERE id = %s", (project,))
    assert db.execute("SELECT count(*) FROM traces WHERE id = %s", (trace,)).fetchone() == (0,)
