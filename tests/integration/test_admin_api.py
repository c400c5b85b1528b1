"""The admin HTTP API (SPEC §2's table) served by the real ingest app against the real database:
the bearer token, every route's status and body shape, and errors in the SPEC §3 envelope."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_api.app import create_app
from shared.runtime.settings import Settings

KEY_RE = re.compile(r"^mibo_[0-9A-Za-z]{32,}$")
ANY_KEY = re.compile(r"mibo_[0-9A-Za-z]{32,}")
PROJECT_FIELDS = {"id", "name", "created_at"}
PLATFORM_FIELDS = {
    "id", "project_id", "name", "type", "workflow_id", "chatflow_id", "otlp_service_name", "created_at",
}  # fmt: skip
CREATED_KEY_FIELDS = {"id", "name", "key", "masked", "platform_ids", "created_at"}
LISTED_KEY_FIELDS = {"id", "name", "masked", "platform_ids", "created_at", "last_used_at"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def call(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any = None,
    *,
    raw: bytes | None = None,
    status: int,
) -> Any:
    """One request; asserts the status and returns the decoded JSON body (None for 204)."""
    data = raw if raw is not None else (None if body is None else msgspec.json.encode(body))
    send = {**headers, "Content-Type": "application/json"} if data is not None else headers
    async with client.request(method, f"/admin/v1{path}", headers=send, data=data) as response:
        text = await response.text()
        assert response.status == status, text
        if status == 204:
            assert text == ""
            return None
        assert response.content_type == "application/json"
        return msgspec.json.decode(text)


def assert_error(body: Any, code: str) -> list[dict[str, str]]:
    """The SPEC §3 error envelope; returns its details."""
    assert body["success"] is False and isinstance(body["timestamp"], str)
    assert body["error"]["code"] == code and body["error"]["message"]
    for detail in body["error"]["details"]:
        assert set(detail) == {"type", "msg", "path", "location"}
    return body["error"]["details"]


async def new_project(client: TestClient[Any, Any], auth: dict[str, str]) -> dict[str, Any]:
    return await call(client, "POST", "/projects", auth, {"name": unique("proj")}, status=201)


# --------------------------------------------------------------------------------------------------
# The token


async def test_without_an_admin_token_configured_the_admin_api_is_absent(settings: Settings) -> None:
    off = msgspec.structs.replace(settings, admin_token="")
    async with TestClient(TestServer(create_app(off))) as client:
        pid = uuid.uuid4()
        for method, path in [
            ("POST", "/projects"),
            ("GET", "/projects"),
            ("POST", f"/projects/{pid}/platforms"),
            ("GET", f"/projects/{pid}/platforms"),
            ("PATCH", f"/projects/{pid}/platforms/{uuid.uuid4()}"),
            ("DELETE", f"/projects/{pid}/platforms/{uuid.uuid4()}"),
            ("POST", f"/projects/{pid}/keys"),
            ("GET", f"/projects/{pid}/keys"),
            ("DELETE", f"/projects/{pid}/keys/{uuid.uuid4()}"),
        ]:
            for headers in (
                {},
                {"Authorization": "Bearer "},
                {"Authorization": f"Bearer {settings.admin_token}"},
            ):
                body = await call(client, method, path, headers, {"name": "x"}, status=404)
                assert_error(body, "NOT_FOUND")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dGVzdDp0ZXN0"},
        {"Authorization": "test-admin-token"},
        {"x-api-key": "test-admin-token"},
    ],
)
async def test_requests_without_the_right_token_are_refused(
    client: TestClient[Any, Any], settings: Settings, headers: dict[str, str]
) -> None:
    async with client.get("/admin/v1/projects", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(await response.json(), "UNAUTHORIZED")
    body = await call(client, "POST", "/projects", headers, {"name": unique("sneaky")}, status=401)
    assert_error(body, "UNAUTHORIZED")
    assert settings.admin_token not in msgspec.json.encode(body).decode()


async def test_the_token_is_checked_before_anything_else(client: TestClient[Any, Any]) -> None:
    body = await call(client, "DELETE", "/projects/not-a-uuid/keys/also-not", {}, status=401)
    assert_error(body, "UNAUTHORIZED")


# --------------------------------------------------------------------------------------------------
# Every route


async def test_every_route(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
    name = unique("shop")
    project = await call(client, "POST", "/projects", auth, {"name": name}, status=201)
    assert set(project) == PROJECT_FIELDS and project["name"] == name
    listed = await call(client, "GET", "/projects", auth, status=200)
    assert project in listed and all(set(p) == PROJECT_FIELDS for p in listed)

    base = f"/projects/{project['id']}"
    n8n = await call(
        client,
        "POST",
        f"{base}/platforms",
        auth,
        {"name": "n8n prod", "type": "n8n", "workflow_id": "wf-1"},
        status=201,
    )
    assert set(n8n) == PLATFORM_FIELDS
    assert (n8n["project_id"], n8n["type"], n8n["workflow_id"], n8n["chatflow_id"]) == (
        project["id"],
        "n8n",
        "wf-1",
        None,
    )
    bot = await call(
        client,
        "POST",
        f"{base}/platforms",
        auth,
        {"name": "bot", "type": "flowise", "chatflow_id": "cf"},
        status=201,
    )
    platforms = await call(client, "GET", f"{base}/platforms", auth, status=200)
    assert sorted(p["id"] for p in platforms) == sorted([n8n["id"], bot["id"]])

    patched = await call(
        client, "PATCH", f"{base}/platforms/{n8n['id']}", auth, {"name": "n8n main"}, status=200
    )
    assert set(patched) == PLATFORM_FIELDS
    assert (patched["name"], patched["workflow_id"]) == ("n8n main", "wf-1")  # absent: unchanged
    patched = await call(
        client, "PATCH", f"{base}/platforms/{n8n['id']}", auth, {"workflow_id": None}, status=200
    )
    assert (patched["name"], patched["workflow_id"]) == ("n8n main", None)  # null: cleared

    unrestricted = await call(client, "POST", f"{base}/keys", auth, {"name": "Production traces"}, status=201)
    empty_scope = await call(
        client, "POST", f"{base}/keys", auth, {"name": "also all", "platform_ids": []}, status=201
    )
    scoped = await call(
        client,
        "POST",
        f"{base}/keys",
        auth,
        {"name": "scoped", "platform_ids": [n8n["id"], bot["id"]]},
        status=201,
    )
    for created in (unrestricted, empty_scope, scoped):
        assert set(created) >= CREATED_KEY_FIELDS
        assert KEY_RE.match(created["key"]) and created["masked"] == "mibo_..." + created["key"][-4:]
    assert unrestricted["platform_ids"] == [] and empty_scope["platform_ids"] == []
    assert scoped["platform_ids"] == [n8n["id"], bot["id"]]

    async with client.get(f"/admin/v1{base}/keys", headers=auth) as response:
        assert response.status == 200
        text = await response.text()
    assert not ANY_KEY.search(text)  # listings never hold a key
    keys = {k["name"]: k for k in msgspec.json.decode(text)}
    assert set(keys) == {"Production traces", "also all", "scoped"}
    for listed_key in keys.values():
        assert set(listed_key) >= LISTED_KEY_FIELDS and "key" not in listed_key
        assert listed_key["last_used_at"] is None
    assert keys["scoped"]["masked"] == scoped["masked"]
    assert sorted(keys["scoped"]["platform_ids"]) == sorted([n8n["id"], bot["id"]])

    assert await call(client, "DELETE", f"{base}/keys/{scoped['id']}", auth, status=204) is None
    assert {k["id"] for k in await call(client, "GET", f"{base}/keys", auth, status=200)} == {
        unrestricted["id"],
        empty_scope["id"],
    }
    assert_error(await call(client, "DELETE", f"{base}/keys/{scoped['id']}", auth, status=404), "NOT_FOUND")

    assert await call(client, "DELETE", f"{base}/platforms/{bot['id']}", auth, status=204) is None
    assert [p["id"] for p in await call(client, "GET", f"{base}/platforms", auth, status=200)] == [n8n["id"]]
    assert_error(await call(client, "DELETE", f"{base}/platforms/{bot['id']}", auth, status=404), "NOT_FOUND")


# --------------------------------------------------------------------------------------------------
# Refusals


async def test_bad_bodies_are_400_with_details_naming_the_field(
    client: TestClient[Any, Any], auth: dict[str, str]
) -> None:
    project = await new_project(client, auth)
    base = f"/projects/{project['id']}"
    cases: list[tuple[str, str, Any, bytes | None, str]] = [
        ("POST", "/projects", None, b"{not json", ""),
        ("POST", "/projects", None, b"", ""),
        ("POST", "/projects", [1, 2], None, ""),
        ("POST", "/projects", {"name": 42}, None, "name"),
        ("POST", "/projects", {}, None, "name"),
        ("POST", "/projects", {"name": "   "}, None, "name"),
        ("POST", f"{base}/platforms", {"name": "x", "type": "zapier"}, None, "type"),
        ("POST", f"{base}/platforms", {"name": "x", "type": "n8n", "workflowId": "wf"}, None, "workflowId"),
        (
            "POST",
            f"{base}/platforms",
            {"name": "x", "type": "flowise", "workflow_id": "wf"},
            None,
            "workflow_id",
        ),
        ("POST", f"{base}/keys", {"name": "k", "platform_ids": ["nope"]}, None, "platform_ids[0]"),
        ("POST", f"{base}/keys", {"name": "k", "platform_ids": "all"}, None, "platform_ids"),
    ]
    for method, path, body, raw, field in cases:
        answer = await call(client, method, path, auth, body, raw=raw, status=400)
        details = assert_error(answer, "VALIDATION_ERROR")
        assert details, answer
        assert details[0]["path"] == field, (body, raw, details)
        assert details[0]["location"] == "body"

    bad_path = await call(client, "GET", "/projects/not-a-uuid/platforms", auth, status=400)
    (detail,) = assert_error(bad_path, "VALIDATION_ERROR")
    assert (detail["path"], detail["location"]) == ("project_id", "path")
    bad_key_id = await call(client, "DELETE", f"{base}/keys/mibo_{'a' * 40}", auth, status=400)
    (detail,) = assert_error(bad_key_id, "VALIDATION_ERROR")
    assert detail["path"] == "key_id"
    assert "a" * 40 not in msgspec.json.encode(bad_key_id).decode()  # a pasted key is never echoed


async def test_conflicts_are_409_with_a_precise_message(
    client: TestClient[Any, Any], auth: dict[str, str]
) -> None:
    project = await new_project(client, auth)
    base = f"/projects/{project['id']}"
    first = await call(
        client,
        "POST",
        f"{base}/platforms",
        auth,
        {"name": "A", "type": "n8n", "workflow_id": "wf-1"},
        status=201,
    )
    dup = await call(
        client,
        "POST",
        f"{base}/platforms",
        auth,
        {"name": "B", "type": "n8n", "workflow_id": "wf-1"},
        status=409,
    )
    (detail,) = assert_error(dup, "CONFLICT")
    assert (
        dup["error"]["message"] == f'workflow_id "wf-1" is already used by n8n platform "A" ({first["id"]})'
    )
    assert detail["path"] == "workflow_id"
    same_name = await call(
        client, "POST", f"{base}/platforms", auth, {"name": "A", "type": "custom"}, status=409
    )
    assert same_name["error"]["message"] == 'a platform named "A" already exists in this project'
    assert_error(
        await call(client, "POST", "/projects", auth, {"name": project["name"]}, status=409), "CONFLICT"
    )


async def test_otlp_service_name_is_set_patched_cleared_and_unique_within_the_project(
    client: TestClient[Any, Any], auth: dict[str, str]
) -> None:
    project = await new_project(client, auth)
    base = f"/projects/{project['id']}"
    api = await call(
        client,
        "POST",
        f"{base}/platforms",
        auth,
        {"name": "checkout", "type": "http_api", "otlp_service_name": "checkout-svc"},
        status=201,
    )
    assert api["otlp_service_name"] == "checkout-svc"
    n8n = await call(client, "POST", f"{base}/platforms", auth, {"name": "n8n", "type": "n8n"}, status=201)
    assert n8n["otlp_service_name"] is None
    # unique within the project whatever the type
    dup = await call(
        client,
        "PATCH",
        f"{base}/platforms/{n8n['id']}",
        auth,
        {"otlp_service_name": "checkout-svc"},
        status=409,
    )
    (detail,) = assert_error(dup, "CONFLICT")
    assert dup["error"]["message"] == (
        f'otlp_service_name "checkout-svc" is already used by http_api platform "checkout" ({api["id"]})'
    )
    assert detail["path"] == "otlp_service_name"
    patched = await call(
        client, "PATCH", f"{base}/platforms/{n8n['id']}", auth, {"otlp_service_name": "flows"}, status=200
    )
    assert (patched["otlp_service_name"], patched["type"]) == ("flows", "n8n")
    cleared = await call(
        client, "PATCH", f"{base}/platforms/{api['id']}", auth, {"otlp_service_name": None}, status=200
    )
    assert cleared["otlp_service_name"] is None
    bad = await call(
        client,
        "POST",
        f"{base}/platforms",
        auth,
        {"name": "x", "type": "custom", "otlp_service_name": " padded"},
        status=400,
    )
    assert assert_error(bad, "VALIDATION_ERROR")[0]["path"] == "otlp_service_name"
    other = await new_project(client, auth)  # another project may use the same name
    await call(
        client,
        "POST",
        f"/projects/{other['id']}/platforms",
        auth,
        {"name": "c", "type": "custom", "otlp_service_name": "flows"},
        status=201,
    )


async def test_unknown_ids_are_404_and_scopes_stay_within_the_project(
    client: TestClient[Any, Any], auth: dict[str, str]
) -> None:
    project, other = await new_project(client, auth), await new_project(client, auth)
    base, other_base = f"/projects/{project['id']}", f"/projects/{other['id']}"
    theirs = await call(
        client, "POST", f"{other_base}/platforms", auth, {"name": "t", "type": "custom"}, status=201
    )

    refused = await call(
        client, "POST", f"{base}/keys", auth, {"name": "k", "platform_ids": [theirs["id"]]}, status=400
    )
    (detail,) = assert_error(refused, "VALIDATION_ERROR")
    assert detail["path"] == "platform_ids[0]" and "belongs to another project" in detail["msg"]
    assert await call(client, "GET", f"{base}/keys", auth, status=200) == []

    # Another project's platform or key cannot be reached through this project's path.
    assert_error(
        await call(client, "PATCH", f"{base}/platforms/{theirs['id']}", auth, {"name": "x"}, status=404),
        "NOT_FOUND",
    )
    their_key = await call(client, "POST", f"{other_base}/keys", auth, {"name": "k"}, status=201)
    assert_error(
        await call(client, "DELETE", f"{base}/keys/{their_key['id']}", auth, status=404), "NOT_FOUND"
    )
    assert len(await call(client, "GET", f"{other_base}/keys", auth, status=200)) == 1

    missing = f"/projects/{uuid.uuid4()}"
    for method, path, body in [
        ("GET", f"{missing}/platforms", None),
        ("POST", f"{missing}/platforms", {"name": "x", "type": "custom"}),
        ("GET", f"{missing}/keys", None),
        ("POST", f"{missing}/keys", {"name": "k"}),
    ]:
        answer = await call(client, method, path, auth, body, status=404)
        (detail,) = assert_error(answer, "NOT_FOUND")
        assert (detail["path"], detail["location"]) == ("project_id", "path")
