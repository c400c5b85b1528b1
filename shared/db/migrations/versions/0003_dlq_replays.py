"""dlq replays: which dead-letter records were replayed, so none is replayed twice by accident

``mibo-ingest dlq replay`` records every DLQ position (topic, partition, offset) it re-produced;
later runs skip those unless told ``--again``. The table is keyed by the position, so filters can
differ from run to run without ever replaying the same record twice.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dlq_replays",
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", postgresql.UUID(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", postgresql.UUID(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", "offset", name=op.f("pk_dlq_replays")),
    )


def downgrade() -> None:
    op.drop_table("dlq_replays")
