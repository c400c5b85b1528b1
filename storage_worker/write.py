"""The bulk write: one batch of rows → ``traces`` in one transaction, poison rows isolated.

Why binary COPY into a staging table, then ``INSERT ... SELECT ... ON CONFLICT``: COPY is
PostgreSQL's fastest way in (one streamed message, no per-row statement or parameter parsing),
and the ``INSERT ... SELECT`` from the session's temporary table then applies the upsert rule to
the whole batch in one statement per conflict target. Measured on this project's stack with 1 KB
traces and 500-row transactions, that is ~2.8x the rows/s of one multi-row
``INSERT ... SELECT FROM unnest(%s::uuid[], ..., %s::jsonb[])`` (array parameters of jsonb are
slow to build and to parse); the binary format adds ~10% over text COPY. ``bench/storage.py``
compares the whole write path against a plain COPY of the same rows. The staging table is
``ON COMMIT DELETE ROWS``: created once per connection, emptied by every commit or rollback.

Two statements, because an ``ON CONFLICT`` names one target:
- no external id → keyed by trace id: ``ON CONFLICT (id) DO NOTHING`` — a re-delivery is a no-op;
- external id → ``ON CONFLICT (project_id, platform_id, external_id) DO UPDATE ... WHERE
  (stored.received_at, stored.id) < (new.received_at, new.id)``: a newer version replaces id, platform, key, body,
  metadata, received-at and updated-at (``stored_at`` stays: when the trace first arrived); an
  older one, or the same one again, changes nothing. The row's id is that of the version it holds
  — the id the client got for its last POST — and ties on received-at are broken by trace id
  exactly as in ``upsert.collapse``.
``RETURNING (xmax = 0)`` tells an insert from an update (a fresh tuple has no deleting xid).

OTLP traces (body_shape ``otlp``, identity ``(project_id, platform_id, 'otlp:<trace id>')``) take a
third path, the merge of ``storage_worker.merge`` (why a spans table: migration 0004):
- the trace row: ``ON CONFLICT (project_id, platform_id, external_id) DO UPDATE`` of the trace-level columns
  when the part is newer by received-at (the row's id is derived from the trace and never
  changes);
- its spans: binary COPY into a second staging table, then ``INSERT INTO trace_spans ... ON
  CONFLICT (trace_id, span_id) DO UPDATE ... WHERE (stored.received_at, stored.part_id) <
  (new.received_at, new.part_id)`` — a span's newer version replaces it, the same or an older one
  changes nothing, so re-deliveries are no-ops; ``RETURNING`` says which versions were written;
- ``updated_at`` of traces that gained spans without a trace-level change (an older part arriving
  late) is bumped, and the parts that wrote nothing are told apart as duplicate or stale by the
  stored spans' part ids.

Dead letters stored after all: a trace that was dead-lettered and is now stored (``dlq replay``,
``replay raw``) has entries in the dead-letter index (``dlq_index``, ``storage_worker.dlq_index``);
the same transaction marks them resolved for every id it wrote or aliased, so a receipt never says
"dead-lettered" for a stored trace. The transaction first takes the indexer's advisory lock, shared
(``sql.LOCK_DLQ_INDEX_SHARED``: why, beside it).

Poison rows: when PostgreSQL refuses the batch because of its data (``\\u0000`` in a JSON string,
a number out of range, the project deleted meanwhile: SQLSTATE classes 21, 22, 23, 54), the
transaction is rolled back and the batch is written again by bisection inside savepoints: halves
that succeed stay, halves that fail are split again, and every single row still refused is
returned as rejected with the database's message. Any other error (connection lost, server
restarting) propagates: the caller retries the whole batch later, which is safe because the write
is idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import errors as pg_errors

from storage_worker import batch_sql
from storage_worker.merge import classify
from storage_worker.rows import Pending, TraceRow, stored_id
from storage_worker.sql import (
    COPY_SPAN_STAGE,
    COPY_STAGE,
    CREATE_SPAN_STAGE,
    CREATE_STAGE,
    INSERT_BY_ID,
    SPAN_STAGE,
    SPAN_STAGE_TYPES,
    STAGE,
    STAGE_TYPES,
    STORED_SPAN_PARTS,
    STORED_VERSIONS,
    TOUCH_TRACES,
    UPSERT_BY_EXTERNAL_ID,
    UPSERT_OTLP_TRACES,
    UPSERT_SPANS,
)
from storage_worker.upsert import (
    Outcome,
    Plan,
    StoredVersion,
    classify_conflicts,
    collapse,
    external_identity,
)

log = structlog.get_logger(__name__)

ROW_FAULTS: tuple[type[psycopg.Error], ...] = (
    pg_errors.CardinalityViolation,  # class 21: self-heals by bisection (never expected: see upsert.py)
    pg_errors.DataError,  # class 22: \u0000 in jsonb, out-of-range values, bad encodings
    pg_errors.IntegrityError,  # class 23: the trace's project was deleted meanwhile
    pg_errors.ProgramLimitExceeded,  # class 54: a value too large for an index or a row
)
PROJECT_FK = "fk_traces_project_id_projects"


@dataclass(frozen=True, slots=True)
class Refused:
    pending: Pending
    detail: str  # the database's message and which trace; becomes ``dlq-detail``


@dataclass(slots=True)
class WriteResult:
    """What became of one batch: an outcome per written record (stored, replaced, duplicate,
    stale, merged), the writes PostgreSQL refused, the records whose platform no longer exists
    (dead-lettered ``platform_unresolved``), the records cancelled by a 503 (never stored), how
    many the collapse found to be duplicates or stale inside the batch, and how many dead-letter
    index entries the batch resolved."""

    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    rejected: list[Refused] = field(default_factory=list)
    orphaned: list[Pending] = field(default_factory=list)
    cancelled: list[Pending] = field(default_factory=list)
    duplicates: int = 0
    stale: int = 0
    resolved: int = 0  # dead-letter index entries of traces this batch stored (a replay)

    def merge(self, other: WriteResult) -> WriteResult:
        self.outcomes.update(other.outcomes)
        self.rejected.extend(other.rejected)
        return self


async def create_stage(conn: psycopg.AsyncConnection[Any]) -> None:
    """Run on every new connection (``Database(setup=...)``): temporary tables are per session."""
    async with conn.transaction():
        await conn.execute(CREATE_STAGE)
        await conn.execute(CREATE_SPAN_STAGE)


def orphan_detail(row: TraceRow) -> str:
    """Why a routed trace cannot be stored on its platform: it was deleted after the routing."""
    return (
        f"Platform {row.platform_id} no longer exists in project {row.project_id}: the platform "
        f"(or its project) was deleted after the router chose it for trace {row.id}"
        + (f" (external id {row.external_id!r})" if row.external_id is not None else "")
        + ". A trace is never stored on a deleted platform; replay it once routing is settled."
    )


def refusal_detail(row: TraceRow, exc: psycopg.Error) -> str:
    """A sentence for operators: which trace, and what PostgreSQL said."""
    which = f"trace {row.id} (project {row.project_id}"
    which += f", external id {row.external_id!r})" if row.external_id is not None else ")"
    if row.is_otlp:
        which = f"OTLP trace {row.external_id} (project {row.project_id}, {len(row.spans)} span(s), part {row.id})"
    diag = exc.diag
    said = diag.message_primary or str(exc).strip()
    if diag.message_detail:
        said = f"{said} ({diag.message_detail})"
    if isinstance(exc, pg_errors.ForeignKeyViolation) and diag.constraint_name == PROJECT_FK:
        return f"PostgreSQL refused {which}: its project no longer exists (deleted after the trace was accepted): {said}"
    return f"PostgreSQL refused {which}: {said} [SQLSTATE {diag.sqlstate}]"


def _copy_row(row: TraceRow) -> tuple[Any, ...]:
    return (
        stored_id(row), row.project_id, row.platform_id, row.api_key_id, row.external_id, row.body_shape,
        row.payload, row.metadata, row.external_metadata, row.received_at,
    )  # fmt: skip


async def _attempt(conn: psycopg.AsyncConnection[Any], items: Sequence[Pending]) -> dict[uuid.UUID, Outcome]:
    """Stage ``items`` and upsert them; the caller holds the transaction (or savepoint)."""
    outcomes: dict[uuid.UUID, Outcome] = {}
    rows = [item.row for item in items]
    by_id = [row for row in rows if row.external_id is None]
    by_external_id = [row for row in rows if row.external_id is not None and not row.is_otlp]
    otlp_writes = [item for item in items if item.row.is_otlp]
    async with conn.cursor() as cur:
        async with cur.copy(COPY_STAGE) as copy:
            copy.set_types(STAGE_TYPES)
            for row in rows:
                await copy.write_row(_copy_row(row))
        if by_id:
            await cur.execute(INSERT_BY_ID)
            inserted = {found for (found,) in await cur.fetchall()}
            for row in by_id:
                outcomes[row.id] = "stored" if row.id in inserted else "duplicate"
        if by_external_id:
            await cur.execute(UPSERT_BY_EXTERNAL_ID)
            written = {
                (project, platform, external): fresh
                for project, platform, external, fresh in await cur.fetchall()
            }
            losers: list[TraceRow] = []
            for row in by_external_id:
                fresh = written.get(external_identity(row))
                if fresh is None:
                    losers.append(row)
                else:
                    outcomes[row.id] = "stored" if fresh else "replaced"
            if losers:
                await cur.execute(
                    STORED_VERSIONS, tuple(map(list, zip(*map(external_identity, losers), strict=True)))
                )
                stored = {(p, pl, e): StoredVersion(i, at) for p, pl, e, i, at in await cur.fetchall()}
                outcomes.update(classify_conflicts(losers, stored))
        if otlp_writes:
            outcomes.update(await _merge_otlp(cur, otlp_writes))
    return outcomes


async def _merge_otlp(cur: psycopg.AsyncCursor[Any], writes: Sequence[Pending]) -> dict[uuid.UUID, Outcome]:
    """The trace rows (staged already), then their spans; the outcome of every original part."""
    await cur.execute(UPSERT_OTLP_TRACES)
    changed = {trace_id: inserted for trace_id, inserted in await cur.fetchall()}
    async with cur.copy(COPY_SPAN_STAGE) as copy:
        copy.set_types(SPAN_STAGE_TYPES)
        for item in writes:
            trace_id = stored_id(item.row)
            for s in item.row.spans:
                await copy.write_row((trace_id, s.span_id, s.part_id, s.received_at, s.span, s.resource))
    await cur.execute(UPSERT_SPANS)
    written: dict[uuid.UUID, set[tuple[str, uuid.UUID]]] = {}
    for trace_id, span_id, part_id in await cur.fetchall():
        written.setdefault(trace_id, set()).add((span_id, part_id))
    touched = [trace_id for trace_id in written if trace_id not in changed]
    if touched:
        await cur.execute(TOUCH_TRACES, (touched,))

    def wrote(row: TraceRow) -> bool:
        mine = written.get(stored_id(row), set())
        return any((span.span_id, row.id) in mine for span in row.spans)

    # parts that wrote nothing are duplicate or stale: which part's version of their spans is stored?
    idle = [part.row for item in writes for part in item.originals if not wrote(part.row)]
    wanted = [(stored_id(row), span.span_id) for row in idle for span in row.spans]
    stored: dict[uuid.UUID, dict[str, uuid.UUID]] = {}
    if wanted:
        await cur.execute(STORED_SPAN_PARTS, ([t for t, _ in wanted], [s for _, s in wanted]))
        for trace_id, span_id, part_id in await cur.fetchall():
            stored.setdefault(trace_id, {})[span_id] = part_id

    outcomes: dict[uuid.UUID, Outcome] = {}
    for item in writes:
        trace_id = stored_id(item.row)
        outcomes.update(
            classify(
                [part.row for part in item.originals],
                inserted=changed.get(trace_id, False),
                written=written.get(trace_id, set()),
                stored=stored.get(trace_id, {}),
            )
        )
    return outcomes


async def _isolate(conn: psycopg.AsyncConnection[Any], items: Sequence[Pending]) -> WriteResult:
    """Bisection inside savepoints: write what PostgreSQL accepts, return what it refuses."""
    try:
        async with conn.transaction():  # a savepoint: the outer transaction is open
            await conn.execute(f"DELETE FROM {STAGE}")  # rows staged by an earlier sub-batch
            await conn.execute(f"DELETE FROM {SPAN_STAGE}")
            return WriteResult(await _attempt(conn, items))
    except ROW_FAULTS as exc:
        if len(items) == 1:
            detail = refusal_detail(items[0].row, exc)
            log.warning("row refused by PostgreSQL", trace_id=str(items[0].row.id), detail=detail)
            return WriteResult(rejected=[Refused(items[0], detail)])
    middle = len(items) // 2
    left = await _isolate(conn, items[:middle])
    return left.merge(await _isolate(conn, items[middle:]))


async def _admit(
    conn: psycopg.AsyncConnection[Any], pending: Sequence[Pending], result: WriteResult
) -> list[Pending]:
    """Inside the write transaction, after ``batch_sql.LOCKS`` and before anything is written: drop
    the records a 503 cancelled (the fence of ``shared.db.cancellations``, whose lock is held until
    commit) and those whose platform no longer exists (the platforms found stay locked against
    deletion until commit)."""
    ids = batch_sql.uuid_bytes([item.row.id for item in pending])  # repeats are harmless to ANY
    wanted = {(item.row.platform_id, item.row.project_id) for item in pending}
    platforms = batch_sql.uuid_array({platform for platform, _ in wanted})
    cur = await conn.execute(batch_sql.ADMIT, {"platforms": platforms, "ids": ids})
    live: set[tuple[uuid.UUID, uuid.UUID]] = set()
    cancelled: set[uuid.UUID] = set()
    for is_live, found, project in await cur.fetchall():
        if is_live:
            live.add((found, project))
        else:
            cancelled.add(found)
    if not cancelled and wanted <= live:
        return list(pending)  # the usual batch: nothing cancelled, every platform alive in its project
    admitted: list[Pending] = []
    for item in pending:
        if item.row.id in cancelled:
            result.cancelled.append(item)
        elif (item.row.platform_id, item.row.project_id) not in live:
            result.orphaned.append(item)
        else:
            admitted.append(item)
    return admitted


async def _alias_and_resolve(conn: psycopg.AsyncConnection[Any], rows: Sequence[TraceRow]) -> int:
    """Alias every id of a trace with an identity beyond its own id to that trace
    (``trace_aliases``), and mark the dead-letter index entries of every id resolved: these traces
    are stored now (a replay of a dead letter); their ids lead to the stored trace (as a row's id
    or an alias). One statement; returns how many entries were resolved."""
    if not rows:
        return 0
    params: dict[str, Any] = {"ids": batch_sql.uuid_bytes(row.id for row in rows)}
    aliased = [row for row in rows if row.external_id is not None]
    if aliased:
        params["alias_ids"] = batch_sql.uuid_bytes(row.id for row in aliased)
        params["alias_projects"] = batch_sql.uuid_bytes(row.project_id for row in aliased)
        params["alias_platforms"] = batch_sql.uuid_bytes(row.platform_id for row in aliased)
        params["alias_externals"] = [row.external_id for row in aliased]
    cur = await conn.execute(batch_sql.ALIAS_AND_RESOLVE if aliased else batch_sql.RESOLVE, params)
    return max(0, cur.rowcount)


async def _write_admitted(
    conn: psycopg.AsyncConnection[Any], pending: Sequence[Pending], *, isolate: bool
) -> WriteResult:
    """One transaction: admit, collapse, write (all at once, or by bisection), alias, resolve
    dead letters, commit."""
    result = WriteResult()
    async with conn.transaction():
        # First, before any row lock: the dead-letter indexer's lock (sql.LOCK_DLQ_INDEX), shared,
        # then the cancellation fence's (batch_sql.LOCKS).
        await conn.execute(batch_sql.LOCKS)
        plan: Plan = collapse(await _admit(conn, pending, result))
        result.duplicates, result.stale = len(plan.duplicates), len(plan.stale)
        if isolate:
            result.merge(await _isolate(conn, plan.writes))
        elif plan.writes:
            result.outcomes.update(await _attempt(conn, plan.writes))
        refused = {part.row.id for r in result.rejected for part in r.pending.originals}
        kept = [part.row for item in (*plan.writes, *plan.stale) for part in item.originals]
        kept = [row for row in kept if row.id not in refused]
        result.resolved = await _alias_and_resolve(conn, kept)
    return result


async def write_rows(conn: psycopg.AsyncConnection[Any], pending: Sequence[Pending]) -> WriteResult:
    """Write one batch of decoded records and commit: admitted (:func:`_admit`), collapsed to one
    write per identity (``upsert.collapse``), upserted, and their ids aliased to their traces.

    Returns each written record's outcome and what was not written; raises on anything that is
    not the data's fault (the transaction is then rolled back and nothing was written)."""
    if not pending:
        return WriteResult()
    try:
        return await _write_admitted(conn, pending, isolate=False)
    except ROW_FAULTS as exc:
        log.info("batch refused; isolating the rows PostgreSQL refuses", rows=len(pending), error=str(exc))
    return await _write_admitted(conn, pending, isolate=True)
