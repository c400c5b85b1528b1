"""otlp: platforms.otlp_service_name and the trace_spans table

``platforms.otlp_service_name``: OTLP traces whose resource ``service.name`` equals it route to the
platform (any type). Unique within the project (partial unique index: platforms without one do
not collide). Changes are announced by the NOTIFY triggers of 0002 like every platform change.

``trace_spans``: the spans of OTLP traces. One OTLP trace arrives in many exports (a batch span
processor flushes every few seconds, several services send their own spans of one distributed
trace), and the stored trace is the union of its spans, a re-sent span replacing its earlier
version. Why a table keyed by (trace, span id) rather than merging spans into ``traces.payload``:

- each export writes only its own spans: no read-modify-write of an ever larger JSONB document
  (a long trace sent in N exports would otherwise be rewritten N times, O(N²) bytes, all under
  the trace row's lock);
- the merge rule is a plain ``INSERT ... ON CONFLICT (trace_id, span_id) DO UPDATE WHERE
  (received_at, part_id) is newer``: per span last-writer-wins on the version of the export that
  carried it, so re-deliveries and replays change nothing and arrival order does not matter;
- spans can be queried and indexed as rows.

``part_id`` is the envelope's trace id (UUIDv7) and ``received_at`` its receive time: together the
version of the span. The trace row (``traces``, body_shape ``otlp``) keeps the trace-level columns;
``GET /public/traces/{id}`` assembles the spans into its payload. Rows go with their trace
(``ON DELETE CASCADE``), hence with their project.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("platforms", sa.Column("otlp_service_name", sa.Text(), nullable=True))
    op.create_index(
        "uq_platforms_project_otlp_service_name",
        "platforms",
        ["project_id", "otlp_service_name"],
        unique=True,
        postgresql_where=sa.text("otlp_service_name IS NOT NULL"),
    )
    op.create_table(
        "trace_spans",
        sa.Column("trace_id", postgresql.UUID(), nullable=False),
        sa.Column("span_id", sa.Text(), nullable=False),
        sa.Column("part_id", postgresql.UUID(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("span", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("resource", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["trace_id"], ["traces.id"], name=op.f("fk_trace_spans_trace_id_traces"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name=op.f("pk_trace_spans")),
    )


def downgrade() -> None:
    op.drop_table("trace_spans")
    op.drop_index(
        "uq_platforms_project_otlp_service_name",
        table_name="platforms",
        postgresql_where=sa.text("otlp_service_name IS NOT NULL"),
    )
    op.drop_column("platforms", "otlp_service_name")
