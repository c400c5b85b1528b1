"""registry change notifications

Every row change of projects, platforms, api_keys and api_key_platforms sends
``pg_notify('mibo_registry', '{"table", "op", "id", "project_id", ...}')`` from an AFTER ... FOR EACH
ROW trigger, so the notification belongs to the transaction that made the change: a revoke is
announced exactly when its DELETE commits (never before, never if it rolls back), and every
ingest process drops the key at once, without a restart (SPEC §2).

Payload fields: ``table``; ``op``, PostgreSQL's TG_OP (``INSERT``, ``UPDATE``, ``DELETE``); ``id``,
the row's id (for api_key_platforms the key's id); ``project_id`` (null for api_key_platforms,
whose row has none); and ``platform_id`` for api_key_platforms. Updates of ``api_keys.last_used_at`` alone are not
announced: the storage worker writes it continuously and no cache depends on it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHANNEL = "mibo_registry"  # shared.registry.REGISTRY_CHANNEL; migrations never import app code
TABLES = ("projects", "platforms", "api_keys", "api_key_platforms")

FUNCTION = f"""
CREATE FUNCTION mibo_registry_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
    payload jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed = to_jsonb(OLD);
    ELSE
        changed = to_jsonb(NEW);
    END IF;
    IF TG_TABLE_NAME = 'api_key_platforms' THEN
        payload = jsonb_build_object(
            'id', changed -> 'api_key_id', 'project_id', NULL, 'platform_id', changed -> 'platform_id');
    ELSIF TG_TABLE_NAME = 'projects' THEN
        payload = jsonb_build_object('id', changed -> 'id', 'project_id', changed -> 'id');
    ELSE
        payload = jsonb_build_object('id', changed -> 'id', 'project_id', changed -> 'project_id');
    END IF;
    payload = jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP) || payload;
    PERFORM pg_notify('{CHANNEL}', payload::text);
    RETURN NULL;
END
$$
"""


def _trigger(table: str) -> str:
    """One row trigger per table. On api_keys only updates naming the columns a key cache depends
    on fire: the storage worker's ``SET last_used_at = ...`` stays silent."""
    events = "INSERT OR UPDATE OR DELETE"
    if table == "api_keys":
        events = "INSERT OR DELETE OR UPDATE OF id, project_id, name, key_hash, last4, restricted"
    return (
        f"CREATE TRIGGER {table}_registry_notify AFTER {events} ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION mibo_registry_notify()"
    )


def upgrade() -> None:
    op.execute(FUNCTION)
    for table in TABLES:
        op.execute(_trigger(table))


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_registry_notify ON {table}")
    op.execute("DROP FUNCTION IF EXISTS mibo_registry_notify()")
