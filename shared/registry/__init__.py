"""Projects, platforms and API keys (SPEC §2): the only place with their rules.

The CLI (``shared.ops.cli.projects|platforms|keys``) and the admin HTTP API
(``ingest_api.endpoints.admin``) are thin shells around these functions, so both enforce exactly
the same rules and say the same thing when something is refused. Every function takes a
``psycopg.AsyncConnection`` in autocommit mode; multi-statement work runs inside
``conn.transaction()`` (a savepoint when the caller already holds a transaction), so a failure
leaves nothing half-done.

The database has the last word on uniqueness (unique constraints and partial unique indexes, see
``shared.db.schema``): checks done here first only exist to produce precise messages, and the
constraint violations that concurrent writers can still hit are translated into the same messages.

One module per entity (``projects``, ``platforms``, ``keys``), the types they return (``types``),
the errors they raise (``errors``), input checks (``validation``), the ingest hot path's key
lookup (``lookup``) and the NOTIFY-driven change feed (``change_feed``). This package re-exports
the operations, so callers write ``registry.create_platform(...)``.
"""

from shared.registry.errors import Conflict, InvalidInput, ManagementError, NotFound, Problem
from shared.registry.keys import create_key, list_keys, revoke_key
from shared.registry.lookup import KeyInfo, fetch_key, load_key_registry, lookup
from shared.registry.platforms import (
    create_platform,
    delete_platform,
    get_platform,
    list_platforms,
    resolve_platform,
    resolve_platform_ids,
    update_platform,
)
from shared.registry.projects import (
    ProjectContents,
    create_project,
    delete_project,
    get_project,
    list_projects,
    project_contents,
    rename_project,
    resolve_project,
)
from shared.registry.types import (
    PLATFORM_TYPES,
    ApiKey,
    CreatedKey,
    Platform,
    PlatformRef,
    PlatformType,
    Project,
)
from shared.registry.validation import MAX_IDENTIFIER_LENGTH, MAX_NAME_LENGTH, parse_uuid

__all__ = [
    "MAX_IDENTIFIER_LENGTH",
    "MAX_NAME_LENGTH",
    "PLATFORM_TYPES",
    "ApiKey",
    "Conflict",
    "CreatedKey",
    "InvalidInput",
    "KeyInfo",
    "ManagementError",
    "NotFound",
    "Platform",
    "PlatformRef",
    "PlatformType",
    "Problem",
    "Project",
    "ProjectContents",
    "create_key",
    "create_platform",
    "create_project",
    "delete_platform",
    "delete_project",
    "fetch_key",
    "get_platform",
    "get_project",
    "list_keys",
    "list_platforms",
    "list_projects",
    "load_key_registry",
    "lookup",
    "parse_uuid",
    "project_contents",
    "rename_project",
    "resolve_platform",
    "resolve_platform_ids",
    "resolve_project",
    "revoke_key",
    "update_platform",
]
