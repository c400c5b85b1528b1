"""``/openapi.json`` is generated from the structs that validate requests and encode answers, and
lists exactly the routes the app serves: pure, no I/O (the app is built, never started)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from openapi_spec_validator import validate

from ingest_api import body, otlp_decode
from ingest_api.app import create_app
from ingest_api.endpoints import admin, batch
from ingest_api.openapi import openapi_document
from ingest_api.responses import OTLP_PATHS
from shared.runtime.settings import Settings

METHODS = {"get", "post", "put", "patch", "delete"}


def served_routes(settings: Settings) -> set[tuple[str, str]]:
    """(path, method) of every route added to the app's router. HEAD is aiohttp's automatic twin
    of each GET, not an operation of its own; ``{id:regex}`` segments read as ``{id}``."""
    routes = set()
    for route in create_app(settings).router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.resource.canonical)
        routes.add((path, route.method.lower()))
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method) for path, item in document["paths"].items() for method in item if method in METHODS
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_documented_routes_are_exactly_the_served_routes() -> None:
    settings = Settings.from_env({"ADMIN_TOKEN": "t", "KEY_PEPPER": "p"})
    served = served_routes(settings)
    assert ("/public/traces/{id}", "get") in served  # the regex route, normalised
    assert documented_routes(openapi_document()) == served


def _component(name: str) -> dict[str, Any]:
    return openapi_document()["components"]["schemas"][name]


def _generated(struct: Any) -> dict[str, Any]:
    _, components = msgspec.json.schema_components([struct], ref_template="#/components/schemas/{name}")
    return components[struct.__name__]


def _same(a: Any, b: Any) -> bool:
    """Equal up to whitespace in descriptions (the document folds docstrings onto one line)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            " ".join(a[k].split()) == " ".join(b[k].split()) if k == "description" else _same(a[k], b[k])
            for k in a
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(
    "struct",
    [
        body.TraceBody,
        body.Span,
        batch.BatchRequest,
        batch.BatchItem,
        otlp_decode.OtlpRequest,
        otlp_decode.OtlpAnyValue,
        admin.ProjectIn,
        admin.PlatformIn,
        admin.PlatformPatch,
        admin.KeyIn,
    ],
)
def test_request_schemas_are_the_decoding_structs(struct: Any) -> None:
    assert _same(_component(struct.__name__), _generated(struct))


def test_every_json_request_body_refers_to_a_generated_component() -> None:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                # no hand-written request schema: a generated component, plus the rules the
                # struct's own Meta(extra_json_schema=...) adds beside it
                ref = schema.get("$ref") or schema["allOf"][0]["$ref"]
                assert ref.startswith("#/components/schemas/"), (path, method)
                assert not {"properties", "type", "items"} & set(schema), (path, method)


def test_what_the_admin_api_refuses_the_document_refuses() -> None:
    for name in ("ProjectIn", "PlatformIn", "PlatformPatch", "KeyIn"):
        assert _component(name)["additionalProperties"] is False, name
    name = _component("ProjectIn")["properties"]["name"]
    assert name["minLength"] == 1 and name["maxLength"] == 200 and name["pattern"]
    assert _component("PlatformIn")["properties"]["type"]["enum"] == ["custom", "flowise", "http_api", "n8n"]
    span_id = _component("Span")["properties"]["span_id"]
    assert (span_id["minLength"], span_id["maxLength"]) == (1, 1024)


def test_admin_patterns_mean_the_same_in_python_and_in_json_schema() -> None:
    """The patterns run in Python's re (msgspec) and in ECMA-262 (JSON Schema validators): they
    use explicit character classes only, so both engines accept the same strings."""
    for name in ("name", "workflow_id", "otlp_service_name"):
        schema = _component("PlatformIn")["properties"][name]
        pattern = (schema.get("anyOf") or [schema])[0]["pattern"]
        assert "\\s" not in pattern and "\\w" not in pattern and "\\d" not in pattern, pattern
        re.compile(pattern)


def test_error_answers_use_the_route_format() -> None:
    paths = openapi_document()["paths"]
    for path, item in paths.items():
        for operation in item.values():
            for status, answer in operation["responses"].items():
                if not status.startswith(("4", "5")) or path in ("/readyz",):
                    continue
                schema = answer["content"]["application/json"]["schema"]
                expected = "RpcStatus" if path in OTLP_PATHS else "ErrorBody"
                assert schema == {"$ref": f"#/components/schemas/{expected}"}, (path, status)
