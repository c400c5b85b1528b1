"""The local stack's process handling, and `dev status` on the running test stack."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from shared.devstack import processes
from shared.devstack.stack import Stack
from tests.services import Services


def test_start_running_stop(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "p.pid", tmp_path / "p.log"
    code = "import signal,sys,time; print('hello', flush=True); time.sleep(60)"
    pid = processes.start([sys.executable, "-c", code], pidfile=pidfile, logfile=logfile, env=os.environ)
    assert processes.running(pidfile) == pid
    deadline = time.monotonic() + 10
    while "hello" not in logfile.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "hello" in logfile.read_text()
    processes.stop(pid, timeout=5)
    assert processes.running(pidfile) is None


def test_status_of_a_stack_never_created(tmp_path: Path) -> None:
    assert Stack(tmp_path / "none").status() == [("stack", "not created", str((tmp_path / "none").resolve()))]


def test_status_reports_the_running_components(services: Services) -> None:
    if services.stack is None:  # services came from the environment or testcontainers
        assert services.origin in {"environment", "testcontainers"}
        return
    assert isinstance(services.stack, Stack)
    rows = {name: (state, where) for name, state, where in services.stack.status()}
    assert rows["kafka"][0].startswith("up (pid") and rows["kafka"][1] == services.bootstrap
    assert rows["postgres"][0].startswith("up (pid") and rows["postgres"][1] == services.database_url
