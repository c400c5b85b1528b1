"""The ``mibo-ingest projects | platforms | keys`` commands, run as a new user would from the README:
a real subprocess against the real database, ``--json`` parsed for scripts, tables read by eye."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

from shared import registry
from shared.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KEY_RE = re.compile(r"^mibo_[0-9A-Za-z]{32,}$")
ANY_KEY = re.compile(r"mibo_[0-9A-Za-z]{32,}")


def cli(settings: Settings, *args: str, pepper: str | None = "settings") -> subprocess.CompletedProcess[str]:
    """``mibo-ingest ARGS`` in a subprocess; ``pepper=None`` leaves KEY_PEPPER unset (the dev value)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KEY_PEPPER", "ADMIN_TOKEN")}
    env["DATABASE_URL"] = settings.database_url
    if pepper is not None:
        env["KEY_PEPPER"] = settings.key_pepper if pepper == "settings" else pepper
    return subprocess.run(
        [sys.executable, "-m", "shared.ops.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    done = cli(settings, *args)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr  # the settings fixture sets a real pepper
    return done


def ok_json(settings: Settings, *args: str) -> Any:
    return json.loads(ok(settings, *args, "--json").stdout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_the_readme_session(settings: Settings, adb: psycopg.AsyncConnection[Any]) -> None:
    """Issue 3's session: a project, an n8n platform with a workflow id, a Flowise platform with a
    chatflow id, an unrestricted key, a key restricted to both, a key restricted to one; list;
    revoke one."""
    name = unique("shop")
    project = ok_json(settings, "projects", "create", name)
    assert project["name"] == name
    workflow = unique("wf")
    n8n = ok_json(
        settings,
        "platforms",
        "create",
        "n8n prod",
        "--project",
        name,
        "--type",
        "n8n",
        "--workflow-id",
        workflow,
    )
    assert (n8n["type"], n8n["workflow_id"], n8n["project_id"]) == ("n8n", workflow, project["id"])
    flowise = ok_json(
        settings,
        "platforms",
        "create",
        "Support bot",
        "-p",
        project["id"],
        "-t",
        "flowise",
        "--chatflow-id",
        "cf-1",
    )
    assert (flowise["type"], flowise["chatflow_id"], flowise["workflow_id"]) == ("flowise", "cf-1", None)

    everything = cli(settings, "keys", "create", "--project", name, "--name", "Production traces", "--json")
    assert everything.returncode == 0, everything.stderr
    assert "shown only this once" in everything.stderr  # the warning, apart from the JSON
    unrestricted = json.loads(everything.stdout)
    both = ok_json(
        settings,
        "keys",
        "create",
        "-p",
        name,
        "-n",
        "Both",
        "--platform",
        "n8n prod",
        "--platform",
        flowise["id"],
    )
    one = ok_json(settings, "keys", "create", "-p", name, "-n", "n8n only", "--platform", "n8n prod")
    for created in (unrestricted, both, one):
        assert KEY_RE.match(created["key"])
        assert created["masked"] == "mibo_..." + created["key"][-4:]
    assert len({unrestricted["key"], both["key"], one["key"]}) == 3
    assert (unrestricted["restricted"], unrestricted["platform_ids"]) == (False, [])
    assert (both["restricted"], set(both["platform_ids"])) == (True, {n8n["id"], flowise["id"]})
    assert one["platform_ids"] == [n8n["id"]]

    listed = ok(settings, "keys", "list", "--project", name, "--json").stdout
    assert not ANY_KEY.search(listed)
    keys = {k["name"]: k for k in json.loads(listed)}
    assert set(keys) == {"Production traces", "Both", "n8n only"}
    assert keys["Both"]["masked"] == both["masked"]
    assert keys["Production traces"]["platform_ids"] == [] and not keys["Production traces"]["restricted"]
    assert all(k["last_used_at"] is None and "key" not in k for k in keys.values())

    table = ok(settings, "keys", "list", "--project", name).stdout
    assert not ANY_KEY.search(table)
    rows = {line.split("  ")[1].strip(): line for line in table.splitlines()[1:]}
    assert "all platforms" in rows["Production traces"] and rows["Production traces"].endswith("never")
    assert f"n8n prod ({n8n['id']})" in rows["Both"] and f"Support bot ({flowise['id']})" in rows["Both"]
    assert f"n8n prod ({n8n['id']})" in rows["n8n only"] and "Support bot" not in rows["n8n only"]
    assert one["masked"] in rows["n8n only"]

    revoked = ok(settings, "keys", "revoke", one["id"], "--project", name)
    assert "revoked" in revoked.stdout
    assert {k["name"] for k in ok_json(settings, "keys", "list", "-p", name)} == {"Production traces", "Both"}
    assert await registry.lookup(adb, settings.key_pepper, one["key"]) is None
    assert await registry.lookup(adb, settings.key_pepper, both["key"]) is not None

    platforms = ok(settings, "platforms", "list", "--project", name).stdout
    assert workflow in platforms and "cf-1" in platforms and "Support bot" in platforms


def test_key_create_prints_the_key_once_with_a_warning(settings: Settings) -> None:
    name = unique("proj")
    ok(settings, "projects", "create", name)
    done = ok(settings, "keys", "create", "--project", name, "--name", "Staging traces")
    keys = ANY_KEY.findall(done.stdout)
    assert len(keys) == 1
    assert "Scope: all platforms" in done.stdout
    assert "Store this key now" in done.stdout and "shown only this once" in done.stdout
    assert keys[0] not in ok(settings, "keys", "list", "-p", name).stdout


def test_refusals_exit_1_with_the_reason_on_stderr(settings: Settings) -> None:
    name, other = unique("proj"), unique("proj")
    ok(settings, "projects", "create", name)
    ok(settings, "projects", "create", other)
    ok(settings, "platforms", "create", "A", "-p", name, "-t", "n8n", "--workflow-id", "wf-1")
    theirs = ok_json(settings, "platforms", "create", "Theirs", "-p", other, "-t", "custom")

    dup = cli(settings, "platforms", "create", "B", "-p", name, "-t", "n8n", "--workflow-id", "wf-1")
    assert dup.returncode == 1
    assert 'workflow_id "wf-1" is already used by n8n platform "A"' in dup.stderr

    foreign = cli(settings, "keys", "create", "-p", name, "-n", "k", "--platform", theirs["id"])
    assert foreign.returncode == 1
    assert f"platform {theirs['id']} belongs to another project" in foreign.stderr
    assert not ANY_KEY.search(foreign.stdout + foreign.stderr)

    unknown = cli(settings, "keys", "list", "-p", unique("no-such-project"))
    assert unknown.returncode == 1 and "no project with id or name" in unknown.stderr
    wrong_type = cli(settings, "platforms", "create", "x", "-p", name, "-t", "flowise", "--workflow-id", "w")
    assert wrong_type.returncode == 1 and "workflow_id is only for n8n platforms" in wrong_type.stderr
    bad_id = cli(settings, "keys", "revoke", "not-a-uuid")
    assert bad_id.returncode == 1 and "not a valid UUID" in bad_id.stderr

    usage = cli(settings, "keys", "create", "-p", name)
    assert usage.returncode == 2 and "--name" in usage.stderr
    bad_type = cli(settings, "platforms", "create", "x", "-p", name, "-t", "zapier")
    assert bad_type.returncode == 2


def test_platform_update_and_delete(settings: Settings) -> None:
    name = unique("proj")
    ok(settings, "projects", "create", name)
    ok(settings, "platforms", "create", "Orders", "-p", name, "-t", "n8n", "--workflow-id", "wf-1")
    updated = ok_json(
        settings, "platforms", "update", "Orders", "-p", name, "--name", "Orders v2", "--workflow-id", "wf-2"
    )
    assert (updated["name"], updated["workflow_id"]) == ("Orders v2", "wf-2")
    cleared = ok_json(settings, "platforms", "update", updated["id"], "-p", name, "--workflow-id", "")
    assert (cleared["name"], cleared["workflow_id"]) == ("Orders v2", None)
    ok(settings, "platforms", "delete", "Orders v2", "-p", name)
    assert ok_json(settings, "platforms", "list", "-p", name) == []


def test_platform_otlp_service_name(settings: Settings) -> None:
    name = unique("proj")
    ok(settings, "projects", "create", name)
    created = ok_json(
        settings,
        "platforms",
        "create",
        "Checkout",
        "-p",
        name,
        "-t",
        "http_api",
        "--otlp-service-name",
        "checkout",
    )
    assert created["otlp_service_name"] == "checkout"
    listing = ok(settings, "platforms", "list", "-p", name).stdout
    assert "OTLP SERVICE" in listing and "checkout" in listing
    moved = ok_json(settings, "platforms", "update", "Checkout", "-p", name, "--otlp-service-name", "shop")
    assert moved["otlp_service_name"] == "shop"
    cleared = ok_json(settings, "platforms", "update", "Checkout", "-p", name, "--otlp-service-name", "")
    assert cleared["otlp_service_name"] is None


def test_project_rename_and_guarded_delete(settings: Settings) -> None:
    name = unique("proj")
    project = ok_json(settings, "projects", "create", name)
    ok(settings, "keys", "create", "-p", name, "-n", "k")
    renamed = ok_json(settings, "projects", "rename", name, name + "-2")
    assert (renamed["id"], renamed["name"]) == (project["id"], name + "-2")

    refused = cli(settings, "projects", "delete", project["id"])
    assert refused.returncode == 1 and "1 API key(s)" in refused.stderr and "--yes" in refused.stderr
    assert project["id"] in {p["id"] for p in ok_json(settings, "projects", "list")}
    deleted = ok_json(settings, "projects", "delete", project["id"], "--yes")
    assert deleted == {"id": project["id"], "deleted": True, "platforms": 0, "keys": 1, "traces": 0}
    assert project["id"] not in {p["id"] for p in ok_json(settings, "projects", "list")}


def test_the_dev_pepper_is_loudly_warned_about(settings: Settings) -> None:
    done = cli(settings, "projects", "list", pepper=None)
    assert done.returncode == 0
    assert "WARNING: KEY_PEPPER is the built-in development value" in done.stderr
    empty = cli(settings, "projects", "list", pepper="")
    assert empty.returncode == 1 and "KEY_PEPPER" in empty.stderr


def test_an_unreachable_database_is_one_line_on_stderr(settings: Settings) -> None:
    env_settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "KEY_PEPPER": "p"}
    )
    done = cli(env_settings, "projects", "list", pepper="p")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the database") and "Traceback" not in done.stderr
