"""shared.registry against the real PostgreSQL: projects, platforms, API keys, the key lookup
of the ingest hot path and the registry NOTIFY (SPEC §2, issue 3's acceptance list)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest

from shared import registry as m
from shared.contracts.keys import hash_key
from shared.registry.change_feed import REGISTRY_CHANNEL
from shared.runtime.settings import Settings, libpq_url

KEY_RE = re.compile(r"^mibo_[0-9A-Za-z]{32,}$")
AConn = psycopg.AsyncConnection[Any]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_project(adb: AConn) -> m.Project:
    return await m.create_project(adb, unique("proj"))


def registry_events(listener: psycopg.Connection, timeout: float, *about: uuid.UUID) -> list[dict[str, Any]]:
    """The registry notifications arriving within ``timeout`` seconds that concern the given ids
    (as row or project id), so that other tests' changes never disturb the assertions."""
    wanted = {str(i) for i in about}
    events = [
        json.loads(n.payload) for n in listener.notifies(timeout=timeout) if n.channel == REGISTRY_CHANNEL
    ]
    return [e for e in events if e["id"] in wanted or e["project_id"] in wanted]


@pytest.fixture
def listener(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(settings.database_url), autocommit=True) as conn:
        conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
        yield conn


# --------------------------------------------------------------------------------------------------
# Projects


async def test_projects_create_list_rename_delete(adb: AConn) -> None:
    name = unique("shop")
    project = await m.create_project(adb, f"  {name}  ")
    assert project.name == name  # surrounding whitespace dropped
    assert project in await m.list_projects(adb)
    assert await m.resolve_project(adb, name) == project
    assert await m.resolve_project(adb, str(project.id)) == project

    renamed = await m.rename_project(adb, project.id, name + "-renamed")
    assert (renamed.id, renamed.name) == (project.id, name + "-renamed")

    await m.delete_project(adb, project.id)
    assert project.id not in {p.id for p in await m.list_projects(adb)}
    with pytest.raises(m.NotFound):
        await m.delete_project(adb, project.id)
    with pytest.raises(m.NotFound):
        await m.rename_project(adb, project.id, "whatever")


async def test_project_names_are_unique_and_checked(adb: AConn) -> None:
    project = await new_project(adb)
    other = await new_project(adb)
    with pytest.raises(m.Conflict) as err:
        await m.create_project(adb, project.name)
    assert err.value.message == f'a project named "{project.name}" already exists'
    assert (err.value.status, err.value.code) == (409, "CONFLICT")
    with pytest.raises(m.Conflict):
        await m.rename_project(adb, other.id, project.name)
    for bad in ("", "   ", "a\x00b", "x" * 201):
        with pytest.raises(m.InvalidInput) as invalid:
            await m.create_project(adb, bad)
        assert (invalid.value.status, invalid.value.code) == (400, "VALIDATION_ERROR")
        assert invalid.value.details[0].path == "name"


async def test_deleting_a_project_reports_and_takes_its_contents(adb: AConn) -> None:
    project = await new_project(adb)
    platform = await m.create_platform(adb, project.id, "n8n", "n8n", workflow_id="wf")
    key = await m.create_key(adb, "pepper", project.id, "k", [platform.id])
    assert await m.project_contents(adb, project.id) == m.ProjectContents(platforms=1, keys=1, traces=0)
    await m.delete_project(adb, project.id)
    assert await m.lookup(adb, "pepper", key.key) is None


# --------------------------------------------------------------------------------------------------
# Platforms


async def test_platforms_create_list_update_delete(adb: AConn) -> None:
    project = await new_project(adb)
    n8n = await m.create_platform(adb, project.id, "Orders workflow", "n8n", workflow_id="wf-1")
    flowise = await m.create_platform(adb, project.id, "Support bot", "flowise", chatflow_id="cf-1")
    api = await m.create_platform(adb, project.id, "Backend", "http_api")
    custom = await m.create_platform(adb, project.id, "Other", "custom")
    assert (n8n.type, n8n.workflow_id, n8n.chatflow_id, n8n.project_id) == ("n8n", "wf-1", None, project.id)
    assert (flowise.type, flowise.chatflow_id, flowise.workflow_id) == ("flowise", "cf-1", None)
    listed = await m.list_platforms(adb, project.id)
    assert {p.id for p in listed} == {n8n.id, flowise.id, api.id, custom.id}

    renamed = await m.update_platform(adb, project.id, n8n.id, name="Orders")
    assert (renamed.name, renamed.workflow_id) == ("Orders", "wf-1")
    moved = await m.update_platform(adb, project.id, n8n.id, workflow_id="wf-2")
    assert (moved.name, moved.workflow_id) == ("Orders", "wf-2")
    cleared = await m.update_platform(adb, project.id, n8n.id, workflow_id=None)
    assert cleared.workflow_id is None
    assert await m.update_platform(adb, project.id, n8n.id) == cleared  # nothing given, nothing changes

    await m.delete_platform(adb, project.id, api.id)
    assert api.id not in {p.id for p in await m.list_platforms(adb, project.id)}
    with pytest.raises(m.NotFound):
        await m.delete_platform(adb, project.id, api.id)


async def test_routing_identifiers_are_unique_per_project_and_type(adb: AConn) -> None:
    project = await new_project(adb)
    first = await m.create_platform(adb, project.id, "A", "n8n", workflow_id="wf-1")
    with pytest.raises(m.Conflict) as err:
        await m.create_platform(adb, project.id, "B", "n8n", workflow_id="wf-1")
    assert err.value.message == f'workflow_id "wf-1" is already used by n8n platform "A" ({first.id})'
    assert err.value.details[0].path == "workflow_id"

    bot = await m.create_platform(adb, project.id, "Bot", "flowise", chatflow_id="cf-1")
    with pytest.raises(m.Conflict) as err:
        await m.create_platform(adb, project.id, "Bot 2", "flowise", chatflow_id="cf-1")
    assert err.value.message == f'chatflow_id "cf-1" is already used by flowise platform "Bot" ({bot.id})'

    # An update that would collide is refused the same way, and changes nothing.
    second = await m.create_platform(adb, project.id, "B", "n8n", workflow_id="wf-2")
    with pytest.raises(m.Conflict, match='workflow_id "wf-1" is already used by n8n platform "A"'):
        await m.update_platform(adb, project.id, second.id, name="B2", workflow_id="wf-1")
    assert await m.get_platform(adb, project.id, second.id) == second

    # The same identifiers are free in another project.
    other = await new_project(adb)
    await m.create_platform(adb, other.id, "A", "n8n", workflow_id="wf-1")


async def test_otlp_service_names_are_unique_per_project_whatever_the_type(adb: AConn) -> None:
    project = await new_project(adb)
    api = await m.create_platform(adb, project.id, "Checkout", "http_api", otlp_service_name="checkout")
    assert api.otlp_service_name == "checkout"
    n8n = await m.create_platform(
        adb, project.id, "Flows", "n8n", workflow_id="wf", otlp_service_name="flows"
    )
    assert (n8n.workflow_id, n8n.otlp_service_name) == ("wf", "flows")
    with pytest.raises(m.Conflict) as err:
        await m.create_platform(adb, project.id, "Other", "custom", otlp_service_name="checkout")
    assert (
        err.value.message
        == f'otlp_service_name "checkout" is already used by http_api platform "Checkout" ({api.id})'
    )
    assert err.value.details[0].path == "otlp_service_name"
    with pytest.raises(m.Conflict, match='otlp_service_name "flows" is already used by n8n platform "Flows"'):
        await m.update_platform(adb, project.id, api.id, otlp_service_name="flows")
    with pytest.raises(m.InvalidInput, match="whitespace"):
        await m.update_platform(adb, project.id, api.id, otlp_service_name="flows ")
    assert (await m.update_platform(adb, project.id, api.id, name="Shop")).otlp_service_name == "checkout"
    assert (
        await m.update_platform(adb, project.id, api.id, otlp_service_name=None)
    ).otlp_service_name is None
    other = await new_project(adb)
    await m.create_platform(adb, other.id, "Flows", "custom", otlp_service_name="flows")


async def test_platform_names_are_unique_within_a_project(adb: AConn) -> None:
    project = await new_project(adb)
    await m.create_platform(adb, project.id, "Prod", "custom")
    with pytest.raises(m.Conflict) as err:
        await m.create_platform(adb, project.id, "Prod", "http_api")
    assert err.value.message == 'a platform named "Prod" already exists in this project'
    other = await m.create_platform(adb, project.id, "Staging", "custom")
    with pytest.raises(m.Conflict, match="a platform named"):
        await m.update_platform(adb, project.id, other.id, name="Prod")


async def test_platform_input_is_checked(adb: AConn) -> None:
    project = await new_project(adb)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"platform_type": "zapier"}, "type", 'unknown platform type "zapier"'),
        ({"platform_type": "flowise", "workflow_id": "wf"}, "workflow_id", "only for n8n platforms"),
        ({"platform_type": "n8n", "chatflow_id": "cf"}, "chatflow_id", "only for flowise platforms"),
        ({"platform_type": "http_api", "workflow_id": "wf"}, "workflow_id", "only for n8n platforms"),
        ({"platform_type": "n8n", "workflow_id": ""}, "workflow_id", "must not be empty"),
        ({"platform_type": "n8n", "workflow_id": " wf"}, "workflow_id", "whitespace"),
    ]
    for kwargs, path, message in cases:
        with pytest.raises(m.InvalidInput) as err:
            await m.create_platform(adb, project.id, "P", **kwargs)
        assert message in err.value.message
        assert err.value.details[0].path == path
    bot = await m.create_platform(adb, project.id, "Bot", "flowise")
    with pytest.raises(m.InvalidInput, match="only for n8n"):
        await m.update_platform(adb, project.id, bot.id, workflow_id="wf")


async def test_unknown_ids_are_not_found(adb: AConn) -> None:
    project = await new_project(adb)
    missing = uuid.uuid4()
    with pytest.raises(m.NotFound, match="project"):
        await m.create_platform(adb, missing, "P", "custom")
    with pytest.raises(m.NotFound, match="project"):
        await m.list_platforms(adb, missing)
    with pytest.raises(m.NotFound, match="platform"):
        await m.update_platform(adb, project.id, missing, name="x")
    with pytest.raises(m.NotFound, match="project"):
        await m.create_key(adb, "pepper", missing, "k")
    with pytest.raises(m.NotFound):
        await m.revoke_key(adb, missing)
    with pytest.raises(m.NotFound) as err:
        await m.resolve_project(adb, unique("nope"))
    assert err.value.status == 404


# --------------------------------------------------------------------------------------------------
# Keys


async def test_created_keys_have_the_format_and_never_collide(adb: AConn, settings: Settings) -> None:
    project = await new_project(adb)
    created = [await m.create_key(adb, settings.key_pepper, project.id, f"k{i}") for i in range(60)]
    keys = [c.key for c in created]
    assert all(KEY_RE.match(k) for k in keys)
    assert len(set(keys)) == len(keys)
    assert all(c.masked == "mibo_..." + c.key[-4:] for c in created)
    hashes = {h for h, info in (await m.load_key_registry(adb)).items() if info.project_id == project.id}
    assert len(hashes) == len(keys)


async def test_the_plaintext_key_is_nowhere_in_the_database(
    adb: AConn, db: psycopg.Connection, settings: Settings
) -> None:
    project = await new_project(adb)
    platform = await m.create_platform(adb, project.id, "P", "custom")
    created = [
        await m.create_key(adb, settings.key_pepper, project.id, "unrestricted"),
        await m.create_key(adb, settings.key_pepper, project.id, "restricted", [platform.id]),
    ]
    tables = [
        row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    ]
    assert {"projects", "platforms", "api_keys", "api_key_platforms", "traces"} <= set(tables)
    dump = "\n".join(
        row[0] for table in tables for row in db.execute(f'SELECT t::text FROM public."{table}" t').fetchall()
    )
    for c in created:
        random_part = c.key.removeprefix("mibo_")
        assert c.key not in dump
        assert random_part not in dump
        assert random_part.encode().hex() not in dump  # not even as bytea
        assert str(c.id) in dump  # the dump did include the key rows


async def test_listing_shows_only_the_masked_key(adb: AConn, settings: Settings) -> None:
    project = await new_project(adb)
    created = await m.create_key(adb, settings.key_pepper, project.id, "Production n8n")
    (listed,) = await m.list_keys(adb, project.id)
    assert listed.masked == "mibo_..." + created.key[-4:]
    assert not hasattr(listed, "key")
    encoded = msgspec.json.encode(listed).decode()
    assert created.key not in encoded and created.key[5:-4] not in encoded
    assert (listed.id, listed.name, listed.created_at) == (created.id, "Production n8n", created.created_at)
    assert listed.last_used_at is None
    assert (listed.restricted, listed.platform_ids, listed.platforms) == (False, [], [])


async def test_key_scope(adb: AConn, settings: Settings) -> None:
    project = await new_project(adb)
    n8n = await m.create_platform(adb, project.id, "n8n", "n8n", workflow_id="wf")
    bot = await m.create_platform(adb, project.id, "bot", "flowise", chatflow_id="cf")
    pepper = settings.key_pepper

    everything = await m.create_key(adb, pepper, project.id, "all", [])
    both = await m.create_key(adb, pepper, project.id, "both", [n8n.id, bot.id, n8n.id])
    one = await m.create_key(adb, pepper, project.id, "one", [bot.id])
    assert (everything.restricted, everything.platform_ids) == (False, [])
    assert (both.restricted, both.platform_ids) == (True, [n8n.id, bot.id])  # duplicates dropped
    assert one.platforms == [m.PlatformRef(bot.id, "bot")]

    listed = {k.name: k for k in await m.list_keys(adb, project.id)}
    assert set(listed["both"].platform_ids) == {n8n.id, bot.id}
    assert {p.name for p in listed["both"].platforms} == {"n8n", "bot"}

    info = await m.lookup(adb, pepper, both.key)
    assert info == m.KeyInfo(both.id, project.id, True, frozenset({n8n.id, bot.id}))
    assert await m.lookup(adb, pepper, everything.key) == m.KeyInfo(
        everything.id, project.id, False, frozenset()
    )

    # A deleted platform leaves the scope; the key stays restricted instead of widening.
    await m.delete_platform(adb, project.id, bot.id)
    assert await m.lookup(adb, pepper, one.key) == m.KeyInfo(one.id, project.id, True, frozenset())
    (after,) = [k for k in await m.list_keys(adb, project.id) if k.id == one.id]
    assert (after.restricted, after.platform_ids) == (True, [])


async def test_scope_to_another_projects_platform_is_refused(adb: AConn, settings: Settings) -> None:
    project, other = await new_project(adb), await new_project(adb)
    mine = await m.create_platform(adb, project.id, "mine", "custom")
    theirs = await m.create_platform(adb, other.id, "theirs", "custom")
    missing = uuid.uuid4()
    with pytest.raises(m.InvalidInput) as err:
        await m.create_key(adb, settings.key_pepper, project.id, "k", [mine.id, theirs.id, missing])
    assert (err.value.status, err.value.code) == (400, "VALIDATION_ERROR")
    assert [(d.path, d.msg) for d in err.value.details] == [
        (
            "platform_ids[1]",
            f"platform {theirs.id} belongs to another project; a key can only be scoped to its own project's platforms",
        ),
        ("platform_ids[2]", f"platform {missing} does not exist"),
    ]
    assert await m.list_keys(adb, project.id) == []  # nothing half-created


async def test_resolve_platform_ids_by_name_or_id(adb: AConn) -> None:
    project, other = await new_project(adb), await new_project(adb)
    mine = await m.create_platform(adb, project.id, "mine", "custom")
    theirs = await m.create_platform(adb, other.id, "theirs", "custom")
    ids = await m.resolve_platform_ids(adb, project.id, ["mine", str(theirs.id)])
    assert ids == [mine.id, theirs.id]  # ids pass through: create_key names the wrong project
    with pytest.raises(m.NotFound, match='no platform with id or name "theirs"'):
        await m.resolve_platform_ids(adb, project.id, ["theirs"])


async def test_lookup(adb: AConn, settings: Settings) -> None:
    project = await new_project(adb)
    created = await m.create_key(adb, settings.key_pepper, project.id, "k")
    found = await m.lookup(adb, settings.key_pepper, created.key)
    assert found == m.KeyInfo(created.id, project.id, False, frozenset())
    assert await m.lookup(adb, "another-pepper", created.key) is None
    altered = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    assert await m.lookup(adb, settings.key_pepper, altered) is None

    key_hash = hash_key(settings.key_pepper, created.key)
    registry = await m.load_key_registry(adb)
    assert registry[key_hash] == found
    assert await m.fetch_key(adb, key_hash) == found
    assert await m.fetch_key(adb, hash_key(settings.key_pepper, altered)) is None


async def test_lookup_of_a_malformed_key_never_touches_the_database(settings: Settings) -> None:
    conn = await psycopg.AsyncConnection.connect(libpq_url(settings.database_url), autocommit=True)
    await conn.close()
    for malformed in ("", "mibo_", "mibo_short", "Bearer mibo_" + "a" * 40, "mibo_" + "-" * 40, "x" * 10_000):
        assert await m.lookup(conn, settings.key_pepper, malformed) is None
    # The same closed connection does fail for a well-formed key: the malformed ones never used it.
    with pytest.raises(psycopg.OperationalError):
        await m.lookup(conn, settings.key_pepper, "mibo_" + "a" * 40)


async def test_revoke_removes_the_key_and_notifies_listeners(
    adb: AConn, settings: Settings, listener: psycopg.Connection
) -> None:
    project = await new_project(adb)
    platform = await m.create_platform(adb, project.id, "P", "custom")
    created = await m.create_key(adb, settings.key_pepper, project.id, "k", [platform.id])
    registry_events(listener, 0.2, project.id)  # drain the creation events

    await m.revoke_key(adb, created.id, project_id=project.id)

    assert await m.lookup(adb, settings.key_pepper, created.key) is None
    assert await m.list_keys(adb, project.id) == []
    events = registry_events(listener, 1.0, created.id)
    assert {
        "table": "api_keys",
        "op": "DELETE",
        "id": str(created.id),
        "project_id": str(project.id),
    } in events
    assert {
        "table": "api_key_platforms",
        "op": "DELETE",
        "id": str(created.id),
        "project_id": None,
        "platform_id": str(platform.id),
    } in events
    with pytest.raises(m.NotFound):
        await m.revoke_key(adb, created.id)


async def test_the_revoke_notification_is_delivered_at_commit(
    adb: AConn, settings: Settings, listener: psycopg.Connection
) -> None:
    project = await new_project(adb)
    created = await m.create_key(adb, settings.key_pepper, project.id, "k")
    kept = await m.create_key(adb, settings.key_pepper, project.id, "kept")
    registry_events(listener, 0.2)

    async with adb.transaction():
        await m.revoke_key(adb, created.id)
        assert registry_events(listener, 0.3, project.id) == []  # not before the commit...
    assert [e["id"] for e in registry_events(listener, 1.0, project.id)] == [str(created.id)]  # ...but at it

    with pytest.raises(RuntimeError):
        async with adb.transaction():
            await m.revoke_key(adb, kept.id)
            raise RuntimeError("roll back")
    assert registry_events(listener, 0.3, project.id) == []  # a rolled-back revoke is never announced
    assert await m.lookup(adb, settings.key_pepper, kept.key) is not None


async def test_every_registry_change_is_announced_but_not_last_used_at(
    adb: AConn, settings: Settings, listener: psycopg.Connection
) -> None:
    project = await new_project(adb)
    platform = await m.create_platform(adb, project.id, "P", "n8n")
    await m.update_platform(adb, project.id, platform.id, workflow_id="wf-9")
    created = await m.create_key(adb, settings.key_pepper, project.id, "k", [platform.id])
    events = registry_events(listener, 1.0, project.id, created.id)
    pid = str(project.id)
    assert [(e["table"], e["op"], e["id"], e["project_id"]) for e in events] == [
        ("projects", "INSERT", pid, pid),
        ("platforms", "INSERT", str(platform.id), pid),
        ("platforms", "UPDATE", str(platform.id), pid),
        ("api_keys", "INSERT", str(created.id), pid),
        ("api_key_platforms", "INSERT", str(created.id), None),
    ]
    # The storage worker's frequent last_used_at writes would only cause pointless cache reloads.
    await adb.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (created.id,))
    assert registry_events(listener, 0.3, project.id, created.id) == []
    await m.delete_project(adb, project.id)
    deleted = {(e["table"], e["op"]) for e in registry_events(listener, 1.0, project.id, created.id)}
    assert deleted == {
        ("projects", "DELETE"),
        ("platforms", "DELETE"),
        ("api_keys", "DELETE"),
        ("api_key_platforms", "DELETE"),
    }
