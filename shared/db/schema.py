"""The schema as SQLAlchemy Core tables: what Alembic migrations create and queries are built on.

Platform routing identifiers are unique within (project, type) — SPEC §2 — by partial unique
indexes, so a platform without an identifier does not collide with another one. ``api_keys``
stores only the keyed hash and the last four characters; ``restricted`` is explicit so a key whose
scoped platforms were all deleted stays restricted (to nothing) instead of silently widening.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

PLATFORM_TYPES = ("n8n", "flowise", "http_api", "custom")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _now() -> Column[dt.datetime]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


projects = Table(
    "projects",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", Text, nullable=False),
    _now(),
    UniqueConstraint("name"),
)

platforms = Table(
    "platforms",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("project_id", UUID(as_uuid=True), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("type", String(16), nullable=False),
    Column("workflow_id", Text),
    Column("chatflow_id", Text),
    Column("otlp_service_name", Text),  # OTLP resource service.name routed here (migration 0004)
    _now(),
    UniqueConstraint("project_id", "name"),
    CheckConstraint(f"type IN ({', '.join(repr(t) for t in PLATFORM_TYPES)})", name="type"),
    CheckConstraint("workflow_id IS NULL OR type = 'n8n'", name="workflow_id_n8n"),
    CheckConstraint("chatflow_id IS NULL OR type = 'flowise'", name="chatflow_id_flowise"),
    Index(
        "uq_platforms_project_type_workflow", "project_id", "type", "workflow_id",
        unique=True, postgresql_where=text("workflow_id IS NOT NULL"),
    ),
    Index(
        "uq_platforms_project_type_chatflow", "project_id", "type", "chatflow_id",
        unique=True, postgresql_where=text("chatflow_id IS NOT NULL"),
    ),
    Index(
        "uq_platforms_project_otlp_service_name", "project_id", "otlp_service_name",
        unique=True, postgresql_where=text("otlp_service_name IS NOT NULL"),
    ),
)  # fmt: skip

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", Text, nullable=False),
    Column("key_hash", LargeBinary, nullable=False),
    Column("last4", String(4), nullable=False),
    Column("restricted", Boolean, nullable=False, server_default=text("false")),
    _now(),
    Column("last_used_at", DateTime(timezone=True)),
    UniqueConstraint("key_hash"),
    Index("ix_api_keys_project_id", "project_id"),
)

api_key_platforms = Table(
    "api_key_platforms",
    metadata,
    Column(
        "api_key_id",
        UUID(as_uuid=True),
        ForeignKey("api_keys.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "platform_id",
        UUID(as_uuid=True),
        ForeignKey("platforms.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

traces = Table(
    "traces",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # No foreign keys to platforms or keys: a trace outlives a deleted platform or a revoked key.
    Column("platform_id", UUID(as_uuid=True), nullable=False),
    Column("api_key_id", UUID(as_uuid=True)),
    Column("external_id", Text),
    Column("body_shape", String(16), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("metadata", JSONB),
    Column("external_metadata", JSONB),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # A trace's identity includes its platform (migration 0005): two platforms that reuse an
    # external id keep two traces. NULL external ids are distinct: such traces are unique by id.
    UniqueConstraint("project_id", "platform_id", "external_id"),
    Index("ix_traces_project_platform_received", "project_id", "platform_id", "received_at"),
    # A project's newest traces (GET /public/traces) and its oldest (retention): migration 0007.
    Index("ix_traces_project_received_id", "project_id", "received_at", "id"),
)

trace_spans = Table(
    "trace_spans",
    metadata,
    # The spans of OTLP traces (body_shape 'otlp'), one row per (trace, span id): every export of
    # a trace adds its spans here instead of rewriting the trace's payload (see migration 0004).
    Column(
        "trace_id",
        UUID(as_uuid=True),
        ForeignKey("traces.id", ondelete="CASCADE", onupdate="CASCADE"),
        primary_key=True,
    ),
    Column("span_id", Text, primary_key=True),
    Column("part_id", UUID(as_uuid=True), nullable=False),  # the envelope that carried this version
    Column("received_at", DateTime(timezone=True), nullable=False),  # ... and when it was received
    Column("span", JSONB, nullable=False),
    Column("resource", JSONB, nullable=False),
)

trace_aliases = Table(
    "trace_aliases",
    metadata,
    # Accepted ids that lead to a trace whose row id is another one (migration 0005): every version
    # of an x-request-id trace, every export of an OTLP trace. Keyed to the trace's identity.
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "project_id",
        UUID(as_uuid=True),
        ForeignKey("projects.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("platform_id", UUID(as_uuid=True), nullable=False),
    Column("external_id", Text, nullable=False),
    # Retention deletes a trace's aliases with it, by identity (migration 0007).
    Index("ix_trace_aliases_identity", "project_id", "platform_id", "external_id"),
)

trace_cancellations = Table(
    "trace_cancellations",
    metadata,
    # Traces answered 503 after they were handed to Kafka: never stored (shared.db.cancellations).
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

dlq_replays = Table(
    "dlq_replays",
    metadata,
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    Column("trace_id", UUID(as_uuid=True)),
    Column("reason", Text, nullable=False),
    Column("run_id", UUID(as_uuid=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

dlq_index = Table(
    "dlq_index",
    metadata,
    # One row per record of traces.dlq (migration 0006), written by the storage worker's second
    # consume loop (storage_worker.dlq_index) from the record's dlq-* headers and envelope: what
    # receipts (GET /public/traces/{id}, mibo-ingest trace) and `mibo-ingest dlq stats` read
    # instead of the topic. Keyed by the record's position, so a re-delivery inserts nothing.
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    # From the envelope; NULL when the value is no envelope (invalid_envelope). No foreign keys:
    # an entry outlives its project, platform or key, as the record outlives them in the topic.
    Column("trace_id", UUID(as_uuid=True)),
    Column("project_id", UUID(as_uuid=True)),
    Column("api_key_id", UUID(as_uuid=True)),
    Column("platform_id", UUID(as_uuid=True)),  # explicit, or routed (storage stage); else NULL
    Column("external_id", Text),
    Column("received_at", DateTime(timezone=True)),
    # From the headers.
    Column("reason", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("candidates", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("origin", Text, nullable=False),  # dlq-source: where the original record sat
    Column("failed_at", DateTime(timezone=True)),  # dlq-failed-at, else the record's timestamp
    Column("attempt", Integer, nullable=False),
    Column("indexed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Set when the trace is stored after all (a replay): by the storage worker's write transaction,
    # or at indexing when the trace was stored already.
    Column("resolved_at", DateTime(timezone=True)),
    Index("ix_dlq_index_trace_id", "trace_id"),
    Index("ix_dlq_index_project_id_reason", "project_id", "reason"),
)
