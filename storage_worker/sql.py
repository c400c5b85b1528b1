"""The storage worker's SQL text, in one place: staging tables, the upserts, the OTLP merge, the
lookups that name outcomes, the platform lock and the aliases. ``write.py`` says why each exists
and in which order they run; ``last_used.py`` keeps its one statement beside its tracker."""

from __future__ import annotations

STAGE = "storage_stage"
COLUMNS = (
    "id", "project_id", "platform_id", "api_key_id", "external_id", "body_shape",
    "payload", "metadata", "external_metadata", "received_at",
)  # fmt: skip
_COLUMN_LIST = ", ".join(COLUMNS)

CREATE_STAGE = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} (
    id uuid NOT NULL,
    project_id uuid NOT NULL,
    platform_id uuid NOT NULL,
    api_key_id uuid,
    external_id text,
    body_shape text NOT NULL,
    payload text NOT NULL,
    metadata text,
    external_metadata text,
    received_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
# JSON travels as text and is cast to jsonb by the INSERT: PostgreSQL parses each document once.

SPAN_STAGE = "storage_span_stage"
CREATE_SPAN_STAGE = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {SPAN_STAGE} (
    trace_id uuid NOT NULL,
    span_id text NOT NULL,
    part_id uuid NOT NULL,
    received_at timestamptz NOT NULL,
    span text NOT NULL,
    resource text NOT NULL
) ON COMMIT DELETE ROWS
"""

COPY_STAGE = f"COPY {STAGE} ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
STAGE_TYPES = ("uuid", "uuid", "uuid", "uuid", "text", "text", "text", "text", "text", "timestamptz")
# Binary COPY: text goes over as its UTF-8 bytes, with no escaping scan over every 1 KB body on
# either side; ~10% faster end to end than the text format in bench/storage.py.

_SELECT_STAGE = f"""
SELECT id, project_id, platform_id, api_key_id, external_id, body_shape,
       payload::jsonb, metadata::jsonb, external_metadata::jsonb, received_at
FROM {STAGE}
"""

INSERT_BY_ID = f"""
INSERT INTO traces ({_COLUMN_LIST})
{_SELECT_STAGE} WHERE external_id IS NULL ORDER BY id
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

UPSERT_BY_EXTERNAL_ID = f"""
INSERT INTO traces AS stored ({_COLUMN_LIST})
{_SELECT_STAGE} WHERE external_id IS NOT NULL AND body_shape <> 'otlp'
ORDER BY project_id, platform_id, external_id
ON CONFLICT (project_id, platform_id, external_id) DO UPDATE SET
    id = EXCLUDED.id,
    api_key_id = EXCLUDED.api_key_id,
    body_shape = EXCLUDED.body_shape,
    payload = EXCLUDED.payload,
    metadata = EXCLUDED.metadata,
    external_metadata = EXCLUDED.external_metadata,
    received_at = EXCLUDED.received_at,
    updated_at = now()
WHERE (stored.received_at, stored.id) < (EXCLUDED.received_at, EXCLUDED.id)
RETURNING stored.project_id, stored.platform_id, stored.external_id, (stored.xmax = 0) AS inserted
"""
# ORDER BY: concurrent writers (two workers during a rebalance) take row locks in the same order.

UPSERT_OTLP_TRACES = f"""
INSERT INTO traces AS stored ({_COLUMN_LIST})
{_SELECT_STAGE} WHERE body_shape = 'otlp' ORDER BY project_id, platform_id, external_id
ON CONFLICT (project_id, platform_id, external_id) DO UPDATE SET
    api_key_id = EXCLUDED.api_key_id,
    payload = EXCLUDED.payload,
    metadata = EXCLUDED.metadata,
    received_at = EXCLUDED.received_at,
    updated_at = now()
WHERE stored.body_shape = 'otlp' AND stored.received_at < EXCLUDED.received_at
RETURNING stored.id, (stored.xmax = 0) AS inserted
"""
# A stored row of another shape under an otlp: external id (impossible through the API, which
# reserves the prefix) is left alone; its spans then fail their foreign key and are dead-lettered.

COPY_SPAN_STAGE = (
    f"COPY {SPAN_STAGE} (trace_id, span_id, part_id, received_at, span, resource) FROM STDIN (FORMAT BINARY)"
)
SPAN_STAGE_TYPES = ("uuid", "text", "uuid", "timestamptz", "text", "text")

UPSERT_SPANS = f"""
INSERT INTO trace_spans AS stored (trace_id, span_id, part_id, received_at, span, resource)
SELECT trace_id, span_id, part_id, received_at, span::jsonb, resource::jsonb
FROM {SPAN_STAGE} ORDER BY trace_id, span_id
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    part_id = EXCLUDED.part_id,
    received_at = EXCLUDED.received_at,
    span = EXCLUDED.span,
    resource = EXCLUDED.resource
WHERE (stored.received_at, stored.part_id) < (EXCLUDED.received_at, EXCLUDED.part_id)
RETURNING stored.trace_id, stored.span_id, stored.part_id
"""

TOUCH_TRACES = "UPDATE traces SET updated_at = now() WHERE id = ANY(%s)"

STORED_SPAN_PARTS = """
SELECT s.trace_id, s.span_id, s.part_id
FROM unnest(%s::uuid[], %s::text[]) AS wanted(trace_id, span_id)
JOIN trace_spans s ON s.trace_id = wanted.trace_id AND s.span_id = wanted.span_id
"""

STORED_VERSIONS = """
SELECT t.project_id, t.platform_id, t.external_id, t.id, t.received_at
FROM unnest(%s::uuid[], %s::uuid[], %s::text[]) AS wanted(project_id, platform_id, external_id)
JOIN traces t ON t.project_id = wanted.project_id AND t.platform_id = wanted.platform_id
             AND t.external_id = wanted.external_id
"""

# --------------------------------------------------------------------------------------------------
# The dead-letter index (dlq_index, migration 0006): filled by storage_worker.dlq_index from
# traces.dlq, resolved by the write transaction when a dead-lettered trace is stored after all.

DLQ_INDEX_LOCK = 0x6D69626F5F646C71  # "mibo_dlq": the advisory lock the two sides serialise on
LOCK_DLQ_INDEX_SHARED = f"SELECT pg_advisory_xact_lock_shared({DLQ_INDEX_LOCK})"
LOCK_DLQ_INDEX = f"SELECT pg_advisory_xact_lock({DLQ_INDEX_LOCK})"
# Why a lock: a trace replayed before its DLQ record was indexed. The indexer inserts the entry
# already resolved when the trace is stored; the write transaction resolves entries already
# indexed. Without the lock each could miss the other's uncommitted work (READ COMMITTED) and leave
# an entry unresolved forever. Storage takes SHARE first thing in its transaction (many writers
# at once, no new row lock is held while waiting), the indexer EXCLUSIVE; whoever comes second
# sees what the first committed.

_INDEX_TYPES = (
    ("topic", "text"), ("partition", "integer"), ("offset", "bigint"), ("trace_id", "uuid"),
    ("project_id", "uuid"), ("api_key_id", "uuid"), ("platform_id", "uuid"), ("external_id", "text"),
    ("received_at", "timestamptz"), ("reason", "text"), ("stage", "text"), ("detail", "text"),
    ("candidates", "text[]"), ("origin", "text"), ("failed_at", "timestamptz"), ("attempt", "integer"),
)  # fmt: skip
INDEX_COLUMNS = tuple(name for name, _ in _INDEX_TYPES)
_INDEX_LIST = ", ".join(f'"{name}"' for name in INDEX_COLUMNS)

INSERT_DLQ_INDEX = f"""
INSERT INTO dlq_index ({_INDEX_LIST}, resolved_at)
SELECT v.*, CASE WHEN EXISTS (SELECT 1 FROM traces t WHERE t.id = v.trace_id)
                   OR EXISTS (SELECT 1 FROM trace_aliases a WHERE a.id = v.trace_id)
            THEN now() END
FROM (VALUES ({", ".join(f"%s::{kind}" for _, kind in _INDEX_TYPES)})) AS v({_INDEX_LIST})
ON CONFLICT (topic, "partition", "offset") DO NOTHING
"""
# Keyed by the record's position: a re-delivered record inserts nothing. A trace already stored
# (its id is a row's or an alias's: replayed before its dead letter was indexed, or indexed from
# the start of the topic long after) comes in resolved.
