"""The native load generator of ``make bench``: wrk (Debian's package) posting one body.

A Python load generator takes a core of its own on a 2-core machine; wrk takes a fraction of one.
``bench/post.lua`` sets the method, body and headers and prints a JSON summary (requests,
non-2xx answers, socket errors, latency percentiles), parsed here into a ``WrkResult``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        """Requests answered 2xx."""
        return self.requests - self.non2xx


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: `make tools` (or apt-get install wrk)")
    return found


def run_wrk(
    url: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    api_key: str = "",
    connections: int = 64,
    seconds: float = 10.0,
    threads: int = 1,
    timeout_s: float = 10.0,
    delay_ms: float = 0.0,
) -> WrkResult:
    """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``seconds``
    (bounded: wrk stops by itself; the subprocess gets a hard bound on top). ``delay_ms``: each
    connection waits that long before each request (an offered rate instead of a closed loop)."""
    with tempfile.NamedTemporaryFile(prefix="wrk-body-", suffix=".bin") as file:
        file.write(body)
        file.flush()
        env = os.environ | {
            "WRK_BODY": file.name,
            "WRK_CONTENT_TYPE": content_type,
            "WRK_API_KEY": api_key,
            "WRK_DELAY_MS": f"{delay_ms:g}",
        }
        command = [
            wrk_path(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(SCRIPT),
            url,
        ]
        out = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False
        )
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                non2xx=data["non2xx"],
                socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"]
                + data["timeouts"],
                p50_ms=data["p50_us"] / 1000,
                p90_ms=data["p90_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
            )  # fmt: skip
    raise SystemExit(
        f"wrk printed no summary (exit {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}"
    )
