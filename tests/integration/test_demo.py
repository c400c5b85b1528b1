"""``make run`` ends ready to send: ``mibo-ingest dev up`` makes the demo project, its three
platforms and one key, once, and prints the seed's curl with that key; the curl works.

A stack of its own (in a temporary folder, real service processes through the CLI) on the session's
broker, with a topic prefix of its own, and on a database of its own in the session's PostgreSQL,
so "one demo project, one key" is checked in a database nobody else writes. That database comes
from the environment, so the stack makes the demo there only when asked (``--demo``): which is
checked first."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from shared.devstack import listeners
from shared.devstack.demo import HTTP_PLATFORM, KEY_NAME, PROJECT
from shared.devstack.stack import DEFAULT_PORTS
from shared.runtime.settings import Settings, libpq_url
from tests.services import ROOT

KEY = re.compile(r"mibo_[0-9A-Za-z]{32,}")


@dataclass
class DemoStack:
    root: Path
    database_url: str
    env: dict[str, str]

    def dev(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "shared.ops.cli.main", "dev", "--dir", str(self.root), *args]
        done = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(libpq_url(self.database_url), autocommit=True) as conn:
            return conn.execute(sql.encode()).fetchall()


@pytest.fixture(scope="module")
def demo_stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    name = f"demo_{uuid.uuid4().hex[:12]}"
    admin_url = libpq_url(settings.database_url)
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test database's user may not create databases")
    parts = urlsplit(settings.database_url)
    database_url = urlunsplit(parts._replace(path=f"/{name}"))
    root = tmp_path_factory.mktemp("demo-stack") / ".devstack"
    root.mkdir()
    ports: dict[str, int] = {}
    for port_name in DEFAULT_PORTS:  # never a `make run` stack's default ports
        ports[port_name] = listeners.free_port(avoid=ports.values())
    (root / "ports.json").write_text(json.dumps(ports))
    (root / "state.json").write_text(json.dumps({"topic_prefix": f"{name}."}))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.pop("MIBO_DEVSTACK_DIR", None)
    env.update(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        MIBO_CACHE_DIR=str(ROOT / ".cache"),
    )
    stack = DemoStack(root, database_url, env)
    try:
        yield stack
    finally:
        subprocess.run(
            [sys.executable, "-m", "shared.ops.cli.main", "dev", "--dir", str(root), "down"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def pasted(curl: str, env: dict[str, str], *, source: Path | None = None) -> tuple[str, str]:
    """Run a printed curl as a user would paste it (status code appended); (status, body)."""
    script = (f". {source}\n" if source else "") + curl.rstrip() + " -sS -w '\\n%{http_code}'"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    body, _, status = done.stdout.rpartition("\n")
    return status, body


def printed_curl(stdout: str) -> str:
    """The curl command ``dev up`` printed last (its continuation lines included)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("curl -X POST"))
    end = start
    while lines[end].endswith("\\"):
        end += 1
    return "\n".join(lines[start : end + 1])


def test_make_run_ends_ready_to_send(demo_stack: DemoStack) -> None:
    # A database from the environment: the demo only when asked.
    first = demo_stack.dev("up")
    assert "No demo: DATABASE_URL is not this stack's own PostgreSQL" in first.stdout
    assert "dev up --demo" in first.stdout
    assert demo_stack.query("SELECT count(*) FROM projects") == [(0,)]
    assert not (demo_stack.root / "demo-key").exists()
    assert "MIBO_API_KEY" not in (demo_stack.root / "env").read_text()

    # Asked: one project, three platforms, one key restricted to the HTTP API platform.
    created = demo_stack.dev("up", "--demo")
    keys_shown = KEY.findall(created.stdout + created.stderr)
    assert len(set(keys_shown)) == 1, created.stdout
    key = keys_shown[0]
    assert "shown this once" in created.stdout
    key_file = demo_stack.root / "demo-key"
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
    env_file = (demo_stack.root / "env").read_text()
    assert (
        f"export MIBO_API_KEY={key}\n" in env_file
        and (demo_stack.root / "env").stat().st_mode & 0o777 == 0o600
    )
    assert demo_stack.query("SELECT name FROM projects") == [(PROJECT,)]
    platforms = {str(name): str(kind) for name, kind in demo_stack.query("SELECT name, type FROM platforms")}
    assert sorted(platforms.values()) == ["flowise", "http_api", "n8n"]
    assert platforms[HTTP_PLATFORM] == "http_api"
    assert demo_stack.query("SELECT count(*) FROM api_keys") == [(1,)]
    assert demo_stack.query("SELECT name FROM api_keys") == [(KEY_NAME,)]
    assert key not in json.dumps(demo_stack.query("SELECT * FROM api_keys"), default=str)  # only its hash

    # The printed curl, pasted: 202, and the trace is stored on the HTTP API platform.
    curl = printed_curl(created.stdout)
    assert created.stdout.rstrip().endswith(curl)  # the last thing `make run` prints
    assert key in curl and '"data": { "input": "...", "output": "..." }' in curl
    status, body = pasted(curl, demo_stack.env)
    assert status == "202", body
    trace_id = json.loads(body)["data"]["id"]
    deadline = time.monotonic() + 60
    stored: list[tuple[object, ...]] = []
    while not stored and time.monotonic() < deadline:
        stored = demo_stack.query(
            "SELECT p.name FROM traces t JOIN platforms p ON p.id = t.platform_id "
            f"WHERE t.id = '{uuid.UUID(trace_id)}'"
        )
        time.sleep(0.3)
    assert stored == [(HTTP_PLATFORM,)], "the pasted trace was not stored on the HTTP API platform"

    # Again: nothing new, the key not shown, and the curl it prints works from the env file.
    again = demo_stack.dev("up", "--demo")
    assert not KEY.search(again.stdout + again.stderr), again.stdout
    assert "exist already" in again.stdout and str(key_file) in again.stdout
    assert demo_stack.query("SELECT count(*) FROM projects") == [(1,)]
    assert demo_stack.query("SELECT count(*) FROM platforms") == [(3,)]
    assert demo_stack.query("SELECT count(*) FROM api_keys") == [(1,)]
    assert key_file.read_text().strip() == key
    curl = printed_curl(again.stdout)
    assert "$MIBO_API_KEY" in curl and "$INGEST_URL" in curl
    status, body = pasted(curl, demo_stack.env, source=demo_stack.root / "env")
    assert status == "202", body


def test_dev_logs_raw_pipes_the_real_service_logs_into_jq(demo_stack: DemoStack) -> None:
    demo_stack.dev("up")  # running already: a no-op but for the stack's own check
    raw = demo_stack.dev("logs", "--raw", "-n", "1000", "ingest_api").stdout.splitlines()
    assert raw and all(json.loads(line)["event"] for line in raw)
    assert "ingest api listening" in {json.loads(line)["event"] for line in raw}
    if shutil.which("jq"):
        argv = [sys.executable, "-m", "shared.ops.cli.main", "dev", "--dir", str(demo_stack.root)]
        done = subprocess.run(
            f"{' '.join(argv)} logs --raw -n 1000 ingest_api | jq -c .event",
            shell=True,
            env=demo_stack.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and len(done.stdout.splitlines()) == len(raw), done.stderr


def test_a_revoked_demo_key_is_not_replaced(demo_stack: DemoStack) -> None:
    """Someone revoked it on purpose: `up` says so and how to make another, and makes none."""
    demo_stack.dev("up", "--demo")  # the demo exists (made by the first test, or now)
    [(key_id,)] = demo_stack.query("SELECT id FROM api_keys")
    revoke = [
        sys.executable,
        "-m",
        "shared.ops.cli.main",
        "keys",
        "revoke",
        str(key_id),
        "--project",
        PROJECT,
    ]
    done = subprocess.run(revoke, env=demo_stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    after = demo_stack.dev("up", "--demo")
    assert "was revoked" in after.stdout and "keys create --project demo" in after.stdout
    assert not KEY.search(after.stdout + after.stderr)
    assert demo_stack.query("SELECT count(*) FROM api_keys") == [(0,)]
    assert demo_stack.query("SELECT count(*) FROM projects") == [(1,)]
    assert not (demo_stack.root / "demo-key").exists()
    assert "MIBO_API_KEY" not in (demo_stack.root / "env").read_text()
