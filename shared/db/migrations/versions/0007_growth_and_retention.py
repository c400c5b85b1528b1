"""indexes for a large traces table: a project's newest traces, expiry, aliases by identity

Measured with ``bench/dbgrowth.py`` (README "Storage growth and retention"):

**ix_traces_project_received_id (project_id, received_at, id).** ``GET /public/traces`` without a
platform filter orders a project's traces by ``(received_at, id)`` descending. The only index
that began with the project was ``(project_id, platform_id, received_at)``, so PostgreSQL read
every trace of the project and sorted them for each page: milliseconds at 20 thousand traces,
seconds at millions. This index answers a page by reading ~21 entries backwards; it is also how
retention (``shared.db.retention``) finds a project's oldest traces, a batch at a time.

**ix_trace_aliases_identity (project_id, platform_id, external_id).** Every version of an
x-request-id trace and every OTLP export leaves an alias row; when retention deletes a trace its
aliases go with it, found by the trace's identity.

**Autovacuum on traces and trace_aliases.** Replacing an x-request-id trace rewrites the row
(its id and received-at are indexed, so no update is HOT: ``bench/dbgrowth.py bloat`` counted 0
HOT of 999,000), leaving a dead tuple and dead entries in every index. PostgreSQL's default waits
for 20% of a table to be dead before vacuuming it: 2 million dead rows (~2.4 GB) at 10 million
traces. 1% (plus 1,000 rows) keeps that to ~100 thousand, and a higher cost limit lets vacuum keep
up with the storage worker. No ``fillfactor``: with no HOT update to serve, free space on each
page would only make the table larger.

Both indexes are built ``CONCURRENTLY`` (outside a transaction): on a large live table a plain
``CREATE INDEX`` would block the storage worker's writes for as long as the build takes.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


AUTOVACUUM = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_limit = 2000"
)
AUTOVACUUM_OPTIONS = (
    "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_limit"
)


def upgrade() -> None:
    # SHARE UPDATE EXCLUSIVE: concurrent writes go on (only another vacuum or DDL waits).
    op.execute(f"ALTER TABLE traces SET ({AUTOVACUUM})")
    op.execute(f"ALTER TABLE trace_aliases SET ({AUTOVACUUM})")
    with op.get_context().autocommit_block():
        # An interrupted concurrent build leaves an INVALID index behind: drop it and build again.
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_traces_project_received_id")
        op.execute(
            "CREATE INDEX CONCURRENTLY ix_traces_project_received_id ON traces (project_id, received_at, id)"
        )
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_trace_aliases_identity")
        op.execute(
            "CREATE INDEX CONCURRENTLY ix_trace_aliases_identity "
            "ON trace_aliases (project_id, platform_id, external_id)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_trace_aliases_identity")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_traces_project_received_id")
    op.execute(f"ALTER TABLE traces RESET ({AUTOVACUUM_OPTIONS})")
    op.execute(f"ALTER TABLE trace_aliases RESET ({AUTOVACUUM_OPTIONS})")
