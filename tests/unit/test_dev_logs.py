"""``mibo-ingest dev logs``: with ``--raw`` the lines are printed as written (no component prefix), so
the services' JSON lines pipe into ``jq``; ``-f`` never prints a line that is still being written.
No services: a stack folder with log files written here (the real logs of a running stack are
piped into jq in tests/integration/test_demo.py)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.devstack.stack import read_new_lines
from tests.services import ROOT

LINES: list[dict[str, str | int]] = [
    {"event": "ingest api listening", "level": "info", "port": 8080},
    {"event": "kafka producer ready", "level": "info", "topic": "traces.raw"},
    {"event": "key revoked", "level": "info", "key_id": "0190a8e0-0000-7000-8000-000000000000"},
]


def dev_logs(root: Path, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "shared.ops.cli.main", "dev", "--dir", str(root), "logs", *args]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.splitlines()


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    services = tmp_path / "services"
    services.mkdir()
    (services / "ingest_api.log").write_text("".join(json.dumps(line) + "\n" for line in LINES))
    (services / "router_worker.log").write_text(json.dumps({"event": "router ready"}) + "\n")
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "kafka.log").write_text("[2026-11-28 10:00:00,000] INFO Kafka started\n")
    return tmp_path


def test_raw_lines_are_the_log_lines_as_written(stack_dir: Path) -> None:
    raw = dev_logs(stack_dir, "--raw", "ingest_api")
    assert [json.loads(line) for line in raw] == LINES
    prefixed = dev_logs(stack_dir, "ingest_api")
    assert prefixed == [f"{'ingest_api':<15} {line}" for line in raw]
    assert dev_logs(stack_dir, "--raw", "-n", "1", "ingest_api") == raw[-1:]
    # several components: every line still as written, services first by their order
    both = dev_logs(stack_dir, "--raw", "ingest_api", "router_worker")
    assert [json.loads(line)["event"] for line in both][-1] == "router ready"


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq on this machine")
def test_raw_pipes_into_jq(stack_dir: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "shared.ops.cli.main",
        "dev",
        "--dir",
        str(stack_dir),
        "logs",
        "--raw",
        "ingest_api",
    ]
    done = subprocess.run(
        f"{' '.join(argv)} | jq -c .event", shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [json.dumps(line["event"]) for line in LINES]


def test_follow_prints_whole_lines_only(stack_dir: Path) -> None:
    """``-f --raw``: a line written in two pieces comes out once, whole."""
    log = stack_dir / "services" / "ingest_api.log"
    argv = [sys.executable, "-m", "shared.ops.cli.main", "dev", "--dir", str(stack_dir)]
    proc = subprocess.Popen(
        [*argv, "logs", "--raw", "-f", "-n", "0", "ingest_api"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        # Ready means following: a whole line written now comes out (a slow start under load
        # would otherwise take the half line below as the file's end and print only its rest).
        ready = json.dumps({"event": "ready", "level": "info"})
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the follower printed nothing within 30 s"
            with open(log, "a") as fh:
                fh.write(ready + "\n")
            if selector.select(timeout=1):
                break
        line = json.dumps({"event": "trace accepted", "level": "info", "n": 1})
        with open(log, "a") as fh:
            fh.write(line[:20])
        time.sleep(1.5)  # at least two polls see the half line
        with open(log, "a") as fh:
            fh.write(line[20:] + "\n")
        printed = proc.stdout.readline().rstrip("\n")
        while printed == ready:  # the ready lines written before the follower's first answer
            printed = proc.stdout.readline().rstrip("\n")
        assert printed == line
    finally:
        proc.terminate()
        proc.wait(10)


def test_read_new_lines_keeps_a_partial_line_and_restarts_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    assert read_new_lines(path, 0) == ([], 0)  # no file yet
    path.write_bytes(b'{"a": 1}\n{"b":')
    lines, offset = read_new_lines(path, 0)
    assert lines == ['{"a": 1}'] and offset == 9
    assert read_new_lines(path, offset) == ([], 9)
    with open(path, "ab") as fh:
        fh.write(b" 2}\n")
    assert read_new_lines(path, offset) == (['{"b": 2}'], len(path.read_bytes()))
    path.write_bytes(b'{"c": 3}\n')  # truncated and rewritten: shorter than the offset
    assert read_new_lines(path, 100) == (['{"c": 3}'], 9)
