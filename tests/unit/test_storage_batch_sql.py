"""The storage worker's packed id parameters (storage_worker.batch_sql), without a database."""

from __future__ import annotations

import uuid

from storage_worker import batch_sql


def test_ids_are_packed_sixteen_bytes_each_in_order() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    packed = batch_sql.uuid_bytes(ids)
    assert [uuid.UUID(bytes=packed[i : i + 16]) for i in range(0, len(packed), 16)] == ids
    assert batch_sql.uuid_bytes([]) == b""


def test_a_few_ids_go_as_an_array_literal() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert batch_sql.uuid_array([a, b]) == "{" + f"{a},{b}" + "}"
    assert batch_sql.uuid_array([]) == "{}"


def test_the_locks_come_first_in_the_documented_order() -> None:
    """The indexer's advisory lock before the cancellation fence's table lock (write.py, sql.py)."""
    advisory, fence = batch_sql.LOCKS.split("; ")
    assert "pg_advisory_xact_lock_shared" in advisory
    assert fence == "LOCK TABLE trace_cancellations IN SHARE MODE"
