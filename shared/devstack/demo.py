"""The demo tenant ``mibo-ingest dev up`` (``make run``) ends with, so that a newcomer can paste the
seed's curl right away: a project ``demo`` with an n8n, a Flowise and an HTTP API platform, and
one API key.

- **Once.** What was created is recorded in ``<stack>/demo.json`` (ids only); a later ``up``
  finds the project and its key in the database and creates nothing. A database that no longer
  has the project (``rm -rf .devstack``, another ``DATABASE_URL``) gets a new demo; a demo key
  that was revoked is not replaced (someone meant it). Creation is one transaction, so a failure
  leaves no half demo behind.
- **The key is shown once**, by the ``up`` that created it, inside the curl it prints; it is kept
  in ``<stack>/demo-key`` (mode 0600) and exported as ``MIBO_API_KEY`` by ``<stack>/env`` (also
  0600), for the README's and the runbook's examples.
- **Its scope** is the HTTP API platform alone: the seed's curl names no platform, and a key
  restricted to one platform routes there by itself (SPEC §5), so the pasted trace is stored,
  not dead-lettered as ambiguous between three platforms. The n8n and Flowise platforms carry a
  ``workflow_id`` / ``chatflow_id`` for keys created later.
- **Only the local stack's database**: ``dev up`` makes the demo on the PostgreSQL it runs itself;
  on a ``DATABASE_URL`` from the environment only when asked (``dev up --demo``). Never any
  service: production never runs ``dev up``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg

from shared import registry
from shared.devstack.files import write_atomic
from shared.runtime.settings import libpq_url

PROJECT = "demo"
HTTP_PLATFORM = "HTTP API demo"
PLATFORMS: tuple[tuple[str, str, dict[str, str]], ...] = (  # name, type, routing ids
    ("n8n demo", "n8n", {"workflow_id": "demo-workflow"}),
    ("Flowise demo", "flowise", {"chatflow_id": "demo-chatflow"}),
    (HTTP_PLATFORM, "http_api", {}),
)
KEY_NAME = "demo key"
SEED_BODY = '{ "data": { "input": "...", "output": "..." } }'

Outcome = Literal["created", "exists", "revoked", "taken", "skipped"]
SAID: dict[Outcome, str] = {  # dev up's progress line
    "created": "project, platforms and key created",
    "exists": "already there, nothing created",
    "revoked": "its key was revoked; none made",
    "taken": f'a project "{PROJECT}" that is not this stack\'s exists; nothing created',
    "skipped": "skipped, the database is not the stack's own",
}


@dataclass
class Demo:
    """What ``ensure_demo`` found or did; ``key`` only when it created the key (shown that once)."""

    outcome: Outcome
    project_id: uuid.UUID | None = None
    key: str | None = None
    platforms: dict[str, uuid.UUID] = field(default_factory=dict)


def record_file(root: Path) -> Path:
    return root / "demo.json"


def key_file(root: Path) -> Path:
    return root / "demo-key"


def saved_key(root: Path) -> str | None:
    """The demo key kept in the stack's folder, if any."""
    try:
        return key_file(root).read_text().strip() or None
    except OSError:
        return None


async def ensure_demo(root: Path, database_url: str, pepper: str, *, create: bool = True) -> Demo:
    """The demo project, platforms and key in the database at ``database_url``: found, or made
    (see the module docstring for when); with ``create`` false only found (else ``skipped``)."""
    record = _load_record(root)
    if record is None and not create:
        return Demo("skipped")
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) as conn:
        if record is not None:
            found = await _find(conn, root, record)
            if found is not None:
                return found
        if not create:
            return Demo("skipped")
        try:
            async with conn.transaction():
                project = await registry.create_project(conn, PROJECT)
                platforms = {}
                for name, kind, ids in PLATFORMS:
                    platform = await registry.create_platform(
                        conn,
                        project.id,
                        name,
                        kind,
                        workflow_id=ids.get("workflow_id"),
                        chatflow_id=ids.get("chatflow_id"),
                    )
                    platforms[name] = platform.id
                key = await registry.create_key(
                    conn, pepper, project.id, KEY_NAME, [platforms[HTTP_PLATFORM]]
                )
        except registry.Conflict:  # a project of that name that this stack did not make
            return Demo("taken")
    write_atomic(key_file(root), key.key + "\n", mode=0o600)
    write_atomic(
        record_file(root),
        json.dumps(
            {
                "project_id": str(project.id),
                "key_id": str(key.id),
                "platforms": {name: str(pid) for name, pid in platforms.items()},
            },
            indent=2,
        )
        + "\n",
        mode=0o600,
    )
    return Demo("created", project.id, key.key, platforms)


async def _find(conn: psycopg.AsyncConnection[Any], root: Path, record: dict[str, object]) -> Demo | None:
    """The recorded demo as the database has it now; None when the database lost the project."""
    try:
        project_id = uuid.UUID(str(record["project_id"]))
        key_id = uuid.UUID(str(record["key_id"]))
        await registry.get_project(conn, project_id)
    except (KeyError, ValueError, registry.NotFound):
        return None
    platforms = {p.name: p.id for p in await registry.list_platforms(conn, project_id)}
    if any(key.id == key_id for key in await registry.list_keys(conn, project_id)):
        return Demo("exists", project_id, None, platforms)
    key_file(root).unlink(missing_ok=True)  # revoked: no longer a key to offer
    return Demo("revoked", project_id, None, platforms)


def _load_record(root: Path) -> dict[str, object] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(record_file(root).read_text())
        if isinstance(data, dict):
            return data
    return None


def seed_curl(url: str, key: str) -> str:
    """The seed's request, ready to paste (``url`` and ``key`` may be shell variables)."""
    return "\n".join(
        [
            f'curl -X POST "{url}/public/traces" \\',
            '  -H "Content-Type: application/json" \\',
            f'  -H "x-api-key: {key}" \\',
            f"  -d '{SEED_BODY}'",
        ]
    )


def describe(demo: Demo, root: Path, ingest_url: str) -> str:
    """What ``dev up`` prints last about the demo: the curl to paste, or why there is none."""
    env, keyfile = root / "env", key_file(root)
    platforms = ", ".join(
        f'"{name}" ({kind}' + "".join(f", {k} {v}" for k, v in ids.items()) + ")"
        for name, kind, ids in PLATFORMS
    )
    if demo.outcome == "created":
        assert demo.key is not None
        return (
            f'Demo project "{PROJECT}" with the platforms {platforms}, and the API key "{KEY_NAME}",\n'
            f'restricted to "{HTTP_PLATFORM}": a trace that names no platform routes there.\n'
            f"The key is shown this once; it is kept in {keyfile} (mode 0600) and as MIBO_API_KEY in {env}.\n"
            "\nSend the seed's trace (202, then stored on that platform):\n\n"
            + seed_curl(ingest_url, demo.key)
        )
    if demo.outcome == "exists":
        return (
            f'Demo project "{PROJECT}" and its key exist already: the key is in {keyfile},\n'
            f"and MIBO_API_KEY in {env}.\n"
            "\nSend the seed's trace:\n\n"
            f". {env}\n" + seed_curl("$INGEST_URL", "$MIBO_API_KEY")
        )
    if demo.outcome == "revoked":
        return (
            f'The demo key of project "{PROJECT}" was revoked, so none is offered; a new one:\n'
            f'  mibo-ingest keys create --project {PROJECT} --name "{KEY_NAME}" --platform "{HTTP_PLATFORM}"'
        )
    if demo.outcome == "taken":
        return (
            f'No demo: a project named "{PROJECT}" exists that this stack did not make. '
            f"Create a key for it (README: Projects, platforms and API keys), or delete it\n"
            f"(mibo-ingest projects delete {PROJECT} --yes) and run `mibo-ingest dev up` again."
        )
    return (
        "No demo: DATABASE_URL is not this stack's own PostgreSQL "
        "(`mibo-ingest dev up --demo` makes the demo project and key there)."
    )
