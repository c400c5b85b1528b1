"""trace identity per platform; trace aliases; cancelled (503'd) trace ids

**Identity.** A trace sent with an external id (``x-request-id``, or ``otlp:<trace id>`` for an
OpenTelemetry trace) is one row per (project, platform, external id) — before, per (project,
external id), so a key restricted to one platform could replace (or merge spans into) a trace of
another platform by reusing its id, and two platforms that number their executions alike (two n8n
instances) overwrote each other's traces.

**OTLP row ids.** An OTLP trace's row id is derived from (project, platform, external id)
(``shared.contracts.otlp.stored_trace_id``); existing OTLP rows are re-keyed to it here, their spans follow
(``ON UPDATE CASCADE``), and each old id is kept as an alias (below) so ids handed out before this
migration still lead to the trace.

**trace_aliases.** Every accepted id that is not (or not always) a row's own id — each version of
a trace with an ``x-request-id``, each export (part) of an OpenTelemetry trace — maps to the trace's
identity, so ``GET /public/traces/{id}`` with the id a ``202`` answered leads to the stored trace,
or to the newer version that replaced it. Rows go with their project.

**trace_cancellations.** Ids of traces answered ``503`` after they were handed to Kafka (the broker
did not acknowledge in time): the storage worker never stores them, whenever they arrive. Written
by the ingest API before it answers; see ``shared.db.cancellations`` for how the two serialise.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# shared.contracts.otlp's namespace, copied: a migration must not change when the application code does.
_NAMESPACE = uuid.UUID("5b0e7a52-3d2b-4c1e-9f4a-6f7469707470")


def _otlp_id(project_id: uuid.UUID, platform_id: uuid.UUID, external_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{project_id}/{platform_id}/{external_id}")


def upgrade() -> None:
    op.drop_constraint("uq_traces_project_id_external_id", "traces", type_="unique")
    op.create_unique_constraint(
        "uq_traces_project_id_platform_id_external_id", "traces", ["project_id", "platform_id", "external_id"]
    )
    op.create_table(
        "trace_aliases",
        sa.Column("id", postgresql.UUID(), nullable=False),
        sa.Column("project_id", postgresql.UUID(), nullable=False),
        sa.Column("platform_id", postgresql.UUID(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_trace_aliases_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trace_aliases")),
    )
    op.create_table(
        "trace_cancellations",
        sa.Column("id", postgresql.UUID(), nullable=False),
        sa.Column(
            "cancelled_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trace_cancellations")),
    )
    # OTLP rows: re-key to the per-platform id; spans follow through the foreign key.
    op.drop_constraint("fk_trace_spans_trace_id_traces", "trace_spans", type_="foreignkey")
    op.create_foreign_key(
        "fk_trace_spans_trace_id_traces",
        "trace_spans",
        "traces",
        ["trace_id"],
        ["id"],
        ondelete="CASCADE",
        onupdate="CASCADE",
    )
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, project_id, platform_id, external_id FROM traces WHERE body_shape = 'otlp'")
    ).fetchall()
    for old, project_id, platform_id, external_id in rows:
        new = _otlp_id(project_id, platform_id, external_id)
        if new == old:
            continue
        conn.execute(sa.text("UPDATE traces SET id = :new WHERE id = :old"), {"new": new, "old": old})
        conn.execute(
            sa.text(
                "INSERT INTO trace_aliases (id, project_id, platform_id, external_id) "
                "VALUES (:old, :project, :platform, :external) ON CONFLICT DO NOTHING"
            ),
            {"old": old, "project": project_id, "platform": platform_id, "external": external_id},
        )


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, project_id, external_id FROM traces WHERE body_shape = 'otlp'")
    ).fetchall()
    for new, project_id, external_id in rows:  # back to 0004's per-project ids
        old = uuid.uuid5(_NAMESPACE, f"{project_id}/{external_id}")
        conn.execute(sa.text("UPDATE traces SET id = :old WHERE id = :new"), {"new": new, "old": old})
    op.drop_table("trace_cancellations")
    op.drop_table("trace_aliases")
    op.drop_constraint("fk_trace_spans_trace_id_traces", "trace_spans", type_="foreignkey")
    op.create_foreign_key(
        "fk_trace_spans_trace_id_traces", "trace_spans", "traces", ["trace_id"], ["id"], ondelete="CASCADE"
    )
    # Two platforms' traces that share an external id cannot both stay under the old identity.
    op.drop_constraint("uq_traces_project_id_platform_id_external_id", "traces", type_="unique")
    op.create_unique_constraint("uq_traces_project_id_external_id", "traces", ["project_id", "external_id"])
