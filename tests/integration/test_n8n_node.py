"""Mibo's n8n community node (mibo-ai/mibo-testing-n8n-node, nodes/MiboTesting/builders.ts and
mibo-client.ts) end to end: its legacy and its auto-detect ("optimized") bodies, built here
field for field as its builders build them, sent as its client sends them (x-request-id = the
execution id; gzip + application/octet-stream over its 5 MB threshold), routed by their workflow
id to the right one of two n8n platforms of a project, with an unrestricted key."""

from __future__ import annotations

import gzip
import json
import uuid
from typing import Any

import aiohttp
import psycopg

from shared import registry
from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings, libpq_url
from tests.storage_helpers import eventually


def legacy_payload(
    input_data: list[dict[str, Any]], workflow_id: str, metadata: dict[str, Any], nodes: list[dict[str, Any]]
) -> dict[str, Any]:
    """builders.ts buildTracePayload (no platformId, no externalId: the node's defaults)."""
    payload: dict[str, Any] = {
        "data": {"input": input_data},
        "externalMetadata": {"workflowId": workflow_id},
        "metadata": metadata,
    }
    if nodes:
        payload["data"]["nodes"] = nodes
    return payload


def optimized_payload(
    nodes: list[dict[str, Any]], workflow_id: str, workflow_name: str, timestamp: str
) -> dict[str, Any]:
    """builders.ts buildOptimizedTracePayload: node outputs by name, snake_case metadata."""
    data: dict[str, Any] = {}
    skipped = False
    for node in nodes:
        if node.get("_notExecuted"):
            skipped = True
            data[node["nodeName"]] = {
                "output": {},
                "type": node.get("type") or "unknown",
                "status": "skipped",
            }
        else:
            items = node["items"]
            data[node["nodeName"]] = {
                "output": items[0] if len(items) == 1 else items,
                "type": node.get("type") or "unknown",
                "status": "success",
            }
    return {
        "status": "partial" if skipped else "success",
        "data": data,
        "metadata": {"workflow_id": workflow_id, "workflow_name": workflow_name, "timestamp": timestamp},
    }


async def send_like_the_node(ingest: Service, key: str, payload: dict[str, Any], execution_id: str) -> str:
    """mibo-client.ts sendTrace: JSON, or gzip as application/octet-stream over 5 MB."""
    headers = {"x-api-key": key, "Content-Type": "application/json", "x-request-id": execution_id}
    body = json.dumps(payload).encode()
    if len(body) > 5 * 1024 * 1024:
        body = gzip.compress(body)
        headers.update({"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"})
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{ingest.url}/public/traces", data=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
            return answer["data"]["id"]  # the only field the node reads


async def test_the_nodes_bodies_are_routed_by_their_workflow_id(
    ingest: Service, router: Service, storage: Service, settings: Settings
) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"n8n-{suffix}")
        prod = await registry.create_platform(conn, project.id, "n8n prod", "n8n", workflow_id=f"wf-{suffix}")
        await registry.create_platform(
            conn, project.id, "n8n staging", "n8n", workflow_id=f"wf-other-{suffix}"
        )
        key = (await registry.create_key(conn, settings.key_pepper, project.id, "all platforms")).key
    workflow = f"wf-{suffix}"
    nodes: list[dict[str, Any]] = [
        {"nodeName": "Webhook", "type": "n8n-nodes-base.webhook", "items": [{"json": {"q": "hi"}}]},
        {"nodeName": "AI Agent", "type": "@n8n/agent", "items": [{"json": {"a": 1}}, {"json": {"a": 2}}]},
        {"nodeName": "Fallback", "_notExecuted": True, "items": []},
    ]
    metadata: dict[str, Any] = {
        "workflowId": workflow,
        "workflowName": "orders",
        "timestamp": "2026-11-28T12:00:00.000Z",
    }
    sent = {
        "legacy": await send_like_the_node(
            ingest, key, legacy_payload([{"q": "hi"}], workflow, metadata, nodes[:2]), f"{suffix}-41"
        ),
        "auto-detect": await send_like_the_node(
            ingest, key, optimized_payload(nodes, workflow, "orders", metadata["timestamp"]), f"{suffix}-42"
        ),
        "large legacy, gzipped": await send_like_the_node(
            ingest,
            key,
            legacy_payload([{"blob": "x" * (6 * 1024 * 1024)}], workflow, metadata, []),
            f"{suffix}-43",
        ),
    }
    for shape, trace_id in sent.items():
        found: dict[str, Any] = {}

        async def stored(trace_id: str = trace_id) -> bool:
            nonlocal found
            async with aiohttp.ClientSession() as session:
                async with session.get(
                    f"{ingest.url}/public/traces/{trace_id}", headers={"x-api-key": key}
                ) as resp:
                    found = (await resp.json()).get("data") or {}
                    return resp.status == 200

        await eventually(stored, timeout=60, what=f"the {shape} body stored")
        assert found["platformId"] == str(prod.id), shape  # routed by its workflow id, whatever the spelling
