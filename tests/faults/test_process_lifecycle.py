"""Processes that say what they are doing: a service that cannot serve logs why and exits
non-zero (never a silent process that looks "up"), transient outages are retried, and SIGTERM
ends every process within its stated bound — checked over many start/stop cycles."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devstack.pipeline import free_port, service_env, start_ingest
from shared.runtime.settings import Settings

BODY = b'{"data": {"input": "...", "output": "..."}}'


def spawn(module: str, settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            env=service_env(settings, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def records(log: Path) -> list[dict[str, object]]:
    """Every line of a service's log, each of which must be a JSON record."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def finished(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"still running after {timeout} s") from None


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on (without SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "3"])
def test_ingest_that_cannot_bind_logs_why_and_exits_non_zero(
    settings: Settings, taken_port: int, tmp_path: Path, workers: str
) -> None:
    log = tmp_path / "ingest.log"
    proc = spawn(
        "ingest_api",
        settings,
        log,
        INGEST_HOST="127.0.0.1",
        INGEST_PORT=str(taken_port),
        INGEST_WORKERS=workers,
    )
    assert finished(proc, 20) == 3
    cannot = [r for r in records(log) if r["event"] == "cannot listen on the ingest port; exiting"]
    assert len(cannot) == int(workers), log.read_text()
    assert all(r["level"] == "error" and r["port"] == taken_port for r in cannot)
    assert "Address already in use" in str(cannot[0]["error"])
    if workers != "1":
        assert any(r["event"] == "ingest worker exited; stopping the others" for r in records(log))


def test_a_worker_that_dies_stops_the_whole_ingest_service(settings: Settings, tmp_path: Path) -> None:
    service = start_ingest(settings, tmp_path, INGEST_WORKERS="2")
    try:
        deadline = time.monotonic() + 20
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            text = service.log.read_text()
            pids = {int(p) for p in re.findall(r'"pid": (\d+), "event": "ingest api listening"', text)}
            time.sleep(0.1)
        assert len(pids) == 2
        victim, survivor = sorted(pids)
        os.kill(victim, signal.SIGKILL)
        assert finished(service.proc, 40) == 128 + signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(survivor, 0)
        stopped = [
            r for r in records(service.log) if r["event"] == "ingest worker exited; stopping the others"
        ]
        assert stopped and stopped[0]["pid"] == victim and stopped[0]["exit_code"] == 137
    finally:
        service.stop()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may wait for an init that never reaps)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_workers_stop_when_their_parent_is_killed(settings: Settings, tmp_path: Path) -> None:
    service = start_ingest(settings, tmp_path, INGEST_WORKERS="2", SHUTDOWN_TIMEOUT_SECONDS="5")
    try:
        deadline = time.monotonic() + 20
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            text = service.log.read_text()
            pids = {int(p) for p in re.findall(r'"pid": (\d+), "event": "ingest api listening"', text)}
            time.sleep(0.1)
        assert len(pids) == 2
        service.proc.kill()  # kill -9 of the parent: nobody forwards SIGTERM any more
        service.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(pid) for pid in pids), "a worker serves on without its parent"
    finally:
        for pid in pids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_ingest_start_stop_cycles_always_end_in_time(settings: Settings, tmp_path: Path) -> None:
    """SIGTERM at every moment of a life: while connecting to Kafka and PostgreSQL, right after
    becoming ready, and with a request just answered — 20 times, each exit 0 within the bound."""
    bound = 10.0
    started = time.monotonic()
    for cycle in range(20):
        port = free_port()
        log = tmp_path / f"ingest-{cycle}.log"
        proc = spawn(
            "ingest_api",
            settings,
            log,
            INGEST_HOST="127.0.0.1",
            INGEST_PORT=str(port),
            SHUTDOWN_TIMEOUT_SECONDS=str(bound),
        )
        try:
            path = ("/healthz", "/readyz", "/readyz", "/public/traces")[cycle % 4]
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    if path == "/public/traces":
                        request = urllib.request.Request(
                            url + path, data=BODY, headers={"Content-Type": "application/json"}
                        )
                        urllib.request.urlopen(request, timeout=5)  # 401: no key, but answered
                    else:
                        urllib.request.urlopen(url + path, timeout=5)
                    break
                except urllib.error.HTTPError as exc:
                    if path == "/public/traces" and exc.code == 401:
                        break
                except OSError:
                    pass
                time.sleep(0.05 if cycle % 4 == 0 else 0.2)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = finished(proc, bound + 5)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = records(log)
        assert code == 0, (cycle, log.read_text()[-3000:])
        assert took < bound, (cycle, took)
        assert lines[-1]["event"] == "stopped", (cycle, lines[-3:])
    assert time.monotonic() - started < 20 * (bound + 10)


@pytest.mark.parametrize("module", ["router_worker", "storage_worker"])
def test_workers_with_bad_configuration_log_why_and_exit_non_zero(
    settings: Settings, tmp_path: Path, taken_port: int, module: str
) -> None:
    metrics_port = {"router_worker": "ROUTER_METRICS_PORT", "storage_worker": "STORAGE_METRICS_PORT"}[module]
    cases = {
        "not a number": (
            {"ROUTER_BATCH_MAX": "many", metrics_port: str(free_port())},
            2,
            "invalid configuration",
        ),
        "not postgres": (
            {"DATABASE_URL": "mysql://db/x", metrics_port: str(free_port())},
            2,
            "invalid configuration",
        ),
        "port in use": ({metrics_port: str(taken_port), "METRICS_HOST": "127.0.0.1"}, 1, "failed; exiting"),
    }
    for name, (env, code, event) in cases.items():
        log = tmp_path / f"{module}-{name}.log"
        proc = spawn(module, settings, log, **env)
        assert finished(proc, 30) == code, (name, log.read_text()[-2000:])
        errors = [r for r in records(log) if r["level"] == "error"]
        assert errors and event in str(errors[-1]["event"]), (name, errors)


@pytest.mark.parametrize("module", ["router_worker", "storage_worker"])
def test_workers_keep_retrying_an_absent_broker_quietly_and_stop_in_time(
    settings: Settings, tmp_path: Path, module: str
) -> None:
    metrics_port = {"router_worker": "ROUTER_METRICS_PORT", "storage_worker": "STORAGE_METRICS_PORT"}[module]
    log = tmp_path / f"{module}.log"
    proc = spawn(
        module,
        settings,
        log,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # nobody there
        METRICS_HOST="127.0.0.1",
        SHUTDOWN_TIMEOUT_SECONDS="5",
        **{metrics_port: str(free_port())},
    )
    try:
        time.sleep(12)
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert finished(proc, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = records(log)  # every line JSON, libraries' included
    retrying = [r for r in lines if r["event"] == "kafka not reachable yet; retrying"]
    assert retrying, lines[-5:]
    # aiokafka and our retry loop repeat themselves every second: rate-limited to a few lines
    # a window (5 s), each closing window saying how many were held back
    from_kafka = [r for r in lines if str(r.get("logger", "")).startswith("aiokafka")]
    assert len(retrying) + len(from_kafka) <= 12, [r["event"] for r in lines]
    assert any(r.get("repeated") for r in retrying + from_kafka), lines
