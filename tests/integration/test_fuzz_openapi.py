"""Property-based fuzzing of the whole documented API: Schemathesis (its CLI, every phase but the
stateful one) reads ``/openapi.json`` from the running ingest process and sends what it generates
from it — valid and invalid bodies, headers and path segments, and methods the document does not
list — to every public and admin operation, with a real API key and the admin token.

It asserts what issue 12 asks for: no answer is a 5xx, every answer conforms to the document
(status code, content type, headers, body schema), every request the document calls invalid is
refused with a 4xx, every 405 says ``Allow``; and the ingest process never logged an unhandled
error. Bounded: ``FUZZ_SECONDS`` (default 90) for the whole Schemathesis run, about two minutes
with the set-up; ``make fuzz`` runs a longer one (``FUZZ_SECONDS=600``, ``FUZZ_MAX_EXAMPLES=500``,
a random seed). ``Content-Encoding`` is pinned to ``identity`` so bodies reach the decoders rather
than the gunzip step (compression has tests of its own: test_content.py, test_ingest_api.py).

The figures (cases, requests, statuses) are printed, and written next to the reports in the
test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from ingest_api.openapi import openapi_document
from shared import registry
from shared.devstack.pipeline import Service, Tenant
from shared.runtime.settings import Settings, libpq_url

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "90"))
FUZZ_MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))
FUZZ_SEED = os.environ.get("FUZZ_SEED", "20261128")  # "random": a new seed each run
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
)


async def stored_traces(ingest: Service, key: str) -> list[str]:
    """Ids of traces sent through the pipeline and stored (one of each body shape), so the fuzzer
    reads real traces and their answers are checked against the document too."""
    span = {
        "traceId": uuid.uuid4().hex,
        "spanId": uuid.uuid4().hex[:16],
        "name": "fuzz",
        "startTimeUnixNano": "1",
    }
    sends = [
        (
            "/public/traces",
            {"data": {"input": "fuzz", "output": "seed"}, "metadata": {"k": [1, {"v": None}]}},
        ),
        ("/public/traces", {"spans": [{"span_id": "1", "name": "root", "attributes": {"a": 1}}]}),
        ("/public/traces", {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}),
    ]
    ids = []
    async with aiohttp.ClientSession(headers={"x-api-key": key}) as session:
        for path, body in sends:
            async with session.post(ingest.url + path, json=body) as resp:
                assert resp.status == 202, await resp.text()
                ids.append((await resp.json())["data"]["id"])
        deadline = time.monotonic() + 60
        for trace_id in ids:
            while True:
                async with session.get(f"{ingest.url}/public/traces/{trace_id}") as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline, f"trace {trace_id} was not stored"
                await asyncio.sleep(0.3)
    return ids


@pytest.fixture
async def fuzz_targets(
    settings: Settings, tenant: Tenant, ingest: Service, router: Service, storage: Service
) -> dict[str, list[str]]:
    """A project of the fuzzer's own (admin operations may rename, delete and revoke in it), and
    real ids to draw path segments and platform ids from, so requests get past "not found"."""
    suffix = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"fuzz-{suffix}")
        platforms = [
            await registry.create_platform(conn, project.id, "n8n", "n8n", workflow_id=f"wf-{suffix}"),
            await registry.create_platform(
                conn, project.id, "flowise", "flowise", chatflow_id=f"cf-{suffix}"
            ),
            await registry.create_platform(conn, project.id, "http", "http_api"),
        ]
        keys = [
            await registry.create_key(conn, settings.key_pepper, project.id, "fuzz", []),
            await registry.create_key(conn, settings.key_pepper, project.id, "fuzz-n8n", [platforms[0].id]),
        ]
    return {
        "projects": [str(project.id)],
        "ids": [str(p.id) for p in platforms] + [str(k.id) for k in keys],
        "platforms": [str(tenant.n8n), str(tenant.flowise), str(tenant.http)],
        # stored through the key restricted to one platform (it routes without hints); the
        # fuzzer reads them with the tenant's unrestricted key
        "traces": await stored_traces(ingest, tenant.keys["n8n"]),
    }


def _config(targets: dict[str, list[str]]) -> str:
    lines = []
    for name, values in targets.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines += [
        "[parameters]",
        '"path.pid" = { dictionary = "projects", probability = 0.8 }',
        '"path.id" = { dictionary = "ids", probability = 0.6 }',
        '"body.platformId" = { dictionary = "platforms", probability = 0.3 }',
        '"body.platform_ids[*]" = { dictionary = "platforms", probability = 0.3 }',
        "",
        "[[operations]]",
        'include-path = "/public/traces/{id}"',
        'parameters = { "path.id" = { dictionary = "traces", probability = 0.7 } }',
    ]
    return "\n".join(lines) + "\n"


def _statuses(har: dict[str, Any]) -> Counter[int]:
    return Counter(entry["response"]["status"] for entry in har["log"]["entries"])


async def test_fuzzing_the_documented_api_finds_no_5xx_and_no_schema_violation(
    ingest: Service, tenant: Tenant, settings: Settings, fuzz_targets: dict[str, list[str]], tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(fuzz_targets))
    reports = tmp_path / "reports"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{ingest.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--header",
        f"x-api-key: {tenant.keys['all']}",
        "--header",
        f"Authorization: Bearer {settings.admin_token}",
        "--header",
        "Content-Encoding: identity",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(FUZZ_MAX_EXAMPLES),
        "--max-time",
        str(FUZZ_SECONDS),
        "--workers",
        "1",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "30",
        "--report",
        "json,har",
        "--report-dir",
        str(reports),
    ]
    if FUZZ_SEED != "random":
        command += ["--seed", FUZZ_SEED]
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("fuzz_hooks.py")),
    }
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), FUZZ_SECONDS + 300)
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert reports.is_dir(), text[-5000:]
    (run,) = reports.glob("json-*.json")
    (har,) = reports.glob("har-*.json")
    report = json.loads(run.read_text())
    statuses = _statuses(json.loads(har.read_text()))
    figures = {
        "seed": report["seed"],
        "seconds": round(report["running_time"]),
        "operations": report["operations"]["tested"],
        "cases": report["test_cases"]["generated"],
        "requests": sum(statuses.values()),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
    }
    (tmp_path / "fuzz-figures.json").write_text(json.dumps(figures, indent=2))
    print(f"\nfuzz figures: {json.dumps(figures)}")

    server_errors = {status: count for status, count in statuses.items() if status >= 500}
    assert not server_errors, f"{server_errors}\n{text[-20000:]}"
    assert report["test_cases"]["with_failures"] == 0 and not report["failures"], text[-20000:]
    assert not report["errors"], text[-20000:]
    assert proc.returncode == 0, text[-20000:]
    # every documented operation but GET /openapi.json, the document itself (Schemathesis leaves it out)
    documented = sum(
        len(item) for path, item in openapi_document()["paths"].items() if path != "/openapi.json"
    )
    assert report["operations"]["tested"] == report["operations"]["total"] == documented
    assert report["test_cases"]["generated"] >= 1000, figures  # the run really ran
    unhandled = [line for line in ingest.log.read_text().splitlines() if '"unhandled error"' in line]
    assert not unhandled, unhandled[:3]
