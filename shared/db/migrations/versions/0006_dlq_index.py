"""dlq index: every dead-letter record in PostgreSQL, for receipts and stats

``GET /public/traces/{id}`` (and ``mibo-ingest trace``) must say when a trace was dead-lettered,
and why, without reading ``traces.dlq``; ``mibo-ingest dlq stats`` must count without reading the
whole topic. The storage worker indexes every DLQ record here (a consume loop of its own, consumer
group ``<prefix>dlq_index_worker``), keyed by the record's position, so re-deliveries insert
nothing. ``resolved_at`` is set when the trace is stored after all (a replay).

The loop starts at the beginning of the topic for a new consumer group, so records dead-lettered
before this migration are indexed too (those whose traces were stored since come in resolved).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dlq_index",
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", postgresql.UUID(), nullable=True),
        sa.Column("project_id", postgresql.UUID(), nullable=True),
        sa.Column("api_key_id", postgresql.UUID(), nullable=True),
        sa.Column("platform_id", postgresql.UUID(), nullable=True),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("candidates", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("topic", "partition", "offset", name=op.f("pk_dlq_index")),
    )
    op.create_index("ix_dlq_index_trace_id", "dlq_index", ["trace_id"])
    op.create_index("ix_dlq_index_project_id_reason", "dlq_index", ["project_id", "reason"])


def downgrade() -> None:
    op.drop_table("dlq_index")
