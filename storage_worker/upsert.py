"""The upsert rule, as pure functions: which version of a trace a batch writes.

A trace's identity is ``(project_id, platform_id, external_id)`` when the client sent an
``x-request-id``, else its trace id (SPEC §6): the platform is part of it, so two platforms that
reuse an external id keep two traces and no key reaches a trace outside its scope. Within one batch several versions of the same identity may arrive (a client
re-posting, a replay); ``INSERT ... ON CONFLICT DO UPDATE`` may not touch one row twice in one
statement, and only the newest version matters anyway, so the batch is collapsed first:

- same trace id twice (a re-delivery inside the batch) → the extra copies are *duplicates*;
- different trace ids of one identity → the newest ``received_at`` wins (ties broken by trace id,
  a UUIDv7 that sorts by ingest time, so every worker decides the same way); the others are
  *stale*: they are never written, exactly as if they had arrived after the winner.

The database then applies the same rule against what is already stored (``write.py``: a row
holds the id and received-at of its current version), and ``classify_conflicts`` names the outcome
of every row the database did not write.

OTLP parts (shape ``otlp``) are not versions of a trace but pieces of it: parts of one trace in a
batch are *merged* into one write (``storage_worker.merge.fold``), never dropped as stale, and
their outcomes are named after the write (``merge.classify``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from storage_worker.merge import fold
from storage_worker.rows import Pending, TraceRow

Outcome = Literal["stored", "replaced", "duplicate", "stale", "merged"]
"""stored: a new row. replaced: a newer version overwrote a stored row. duplicate: this very
version was already stored (re-delivery, replay). stale: an older version than the stored one.
merged: an OTLP part whose spans were merged into a stored trace."""

ExternalIdentity = tuple[uuid.UUID, uuid.UUID, str]
"""(project, platform, external id)."""
Identity = ExternalIdentity | uuid.UUID


def external_identity(row: TraceRow) -> ExternalIdentity:
    assert row.external_id is not None
    return (row.project_id, row.platform_id, row.external_id)


def identity(row: TraceRow) -> Identity:
    return external_identity(row) if row.external_id is not None else row.id


def _version(row: TraceRow) -> tuple[dt.datetime, uuid.UUID]:
    return (row.received_at, row.id)


@dataclass(frozen=True, slots=True)
class Plan:
    writes: list[Pending]  # one per identity: the newest version in the batch (or the merged OTLP parts)
    duplicates: list[Pending]  # the same trace id seen again in the batch
    stale: list[Pending]  # older versions of an identity whose newer version is in the batch


def collapse(pending: Iterable[Pending]) -> Plan:
    newest: dict[Identity, Pending] = {}
    seen_ids: set[uuid.UUID] = set()
    duplicates: list[Pending] = []
    stale: list[Pending] = []
    for item in pending:
        if item.row.id in seen_ids:
            duplicates.append(item)
            continue
        seen_ids.add(item.row.id)
        key = identity(item.row)
        current = newest.get(key)
        if current is None:
            newest[key] = item
        elif item.row.is_otlp and current.row.is_otlp:
            newest[key] = fold(current, item)
        elif _version(item.row) > _version(current.row):
            stale.append(current)
            newest[key] = item
        else:
            stale.append(item)
    return Plan(list(newest.values()), duplicates, stale)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """What a conflicting row holds after the write: its id and the received-at of its version."""

    id: uuid.UUID
    received_at: dt.datetime


def classify_conflicts(
    losers: Sequence[TraceRow], stored: Mapping[ExternalIdentity, StoredVersion]
) -> dict[uuid.UUID, Outcome]:
    """Outcomes of external-id rows the database did not write (its stored version was not older).

    A stored row carries the id of the version it holds, so a row is a *duplicate* when it is
    that very version, and *stale* when an older one (including a re-delivered version that was
    replaced since)."""
    out: dict[uuid.UUID, Outcome] = {}
    for row in losers:
        current = stored.get(external_identity(row))
        if current is None or current.id == row.id:
            out[row.id] = "duplicate"  # (None: deleted meanwhile with its project; nothing to do)
        else:
            out[row.id] = "stale"
    return out
