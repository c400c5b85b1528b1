"""``GET /openapi.json``: the whole public and admin API as an OpenAPI 3.1 document.

Every body schema — requests and answers — is generated (``msgspec.json.schema_components``) from
the msgspec structs that decode requests (``ingest_api.body``, ``otlp_decode``, ``endpoints.batch``,
``endpoints.admin``),
that encode answers (``responses``, ``batch``, ``shared.registry``), or, for answers built by
handlers as plain dicts, from the structs below; so the document says exactly what the server
enforces and cannot drift from it. What types cannot state is attached to the struct where the
rule is enforced (``Meta(extra_json_schema=...)``). This module only lays out the paths, their
parameters (headers and path segments) and which schema answers which status.

``tests/test_openapi.py`` compares the paths and methods with the app's router;
``tests/test_fuzz_openapi.py`` runs Schemathesis against the running service with this document.
"""

from __future__ import annotations

import datetime as dt
import uuid
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ingest_api.body import MAX_JSON_DEPTH, TraceBodySchema
from ingest_api.endpoints.admin import KeyIn, PlatformInSchema, PlatformPatch, ProjectIn
from ingest_api.endpoints.batch import BatchAnswer, BatchItem, BatchRequest
from ingest_api.endpoints.trace_list import DEFAULT_LIMIT, MAX_LIMIT
from ingest_api.endpoints.trace_read import GZIP_MIN_BYTES, DeadLetteredTrace
from ingest_api.endpoints.traces import EXTERNAL_ID_MAX, EXTERNAL_ID_RULE
from ingest_api.otlp_decode import MAX_VALUE_DEPTH, OtlpRequest
from ingest_api.responses import ErrorBody, Timestamp
from shared.registry import ApiKey, CreatedKey, Platform, Project

REF = "#/components/schemas/{name}"
TRUE = Annotated[bool, Meta(extra_json_schema={"const": True})]


# --------------------------------------------------------------------------------------------------
# Answers that handlers build as dicts (endpoints/traces.py, otlp.py, trace_read.py; app.py): their shape


class QueuedOtlpTrace(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    externalId: str
    traceId: Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
    platformId: uuid.UUID | None
    spans: int


class RejectedSpans(msgspec.Struct, kw_only=True):
    spans: int
    reason: str


class Queued(msgspec.Struct, kw_only=True):
    """``traces``, ``acceptedSpans``, ``rejectedSpans`` and ``rejected`` come with OTLP bodies only
    (``id`` is then the first trace's)."""

    id: uuid.UUID
    externalId: str | None
    platformId: uuid.UUID | None
    status: Literal["queued"]
    createdAt: dt.datetime
    traces: list[QueuedOtlpTrace] | UnsetType = UNSET
    acceptedSpans: int | UnsetType = UNSET
    rejectedSpans: int | UnsetType = UNSET
    rejected: list[RejectedSpans] | UnsetType = UNSET


class Accepted(msgspec.Struct, kw_only=True):
    """202: durable in Kafka."""

    success: TRUE
    message: str
    timestamp: Timestamp
    data: Queued


class StoredTrace(msgspec.Struct, kw_only=True, tag_field="status", tag="stored"):
    """Stored: the trace as it is in the database now."""

    id: uuid.UUID
    platformId: uuid.UUID
    externalId: str | None
    bodyShape: Literal["spans", "data", "otlp"]
    payload: Annotated[Any, Meta(description="The body as sent (OTLP: traceId and every span merged so far)")]
    metadata: Any
    externalMetadata: Any
    receivedAt: dt.datetime
    createdAt: dt.datetime
    updatedAt: dt.datetime


class TraceAnswer(msgspec.Struct, kw_only=True):
    """A receipt: ``data.status`` says whether the trace is stored (the trace itself) or was
    dead-lettered (why and when); both carry ``data.id``."""

    success: TRUE
    message: str
    timestamp: Timestamp
    data: StoredTrace | DeadLetteredTrace


class TraceSummary(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    platformId: uuid.UUID
    externalId: str | None
    bodyShape: Literal["spans", "data", "otlp"]
    receivedAt: dt.datetime
    createdAt: dt.datetime
    updatedAt: dt.datetime


class TracePage(msgspec.Struct, kw_only=True):
    traces: list[TraceSummary]
    nextCursor: Annotated[str | None, Meta(description="Pass as cursor for the next page; null on the last")]


class TraceListAnswer(msgspec.Struct, kw_only=True):
    success: TRUE
    message: str
    timestamp: Timestamp
    data: TracePage


class PartialSuccess(msgspec.Struct, kw_only=True):
    rejectedSpans: (
        Annotated[int | str, Meta(description="int64: a decimal string in OTLP JSON")] | UnsetType
    ) = UNSET
    errorMessage: str | UnsetType = UNSET


class ExportTraceServiceResponse(msgspec.Struct, kw_only=True):
    """OTLP's answer (JSON mapping; protobuf when the request was protobuf)."""

    partialSuccess: PartialSuccess | UnsetType = UNSET


class RpcStatus(msgspec.Struct, kw_only=True):
    """google.rpc.Status (JSON mapping; protobuf when the request was protobuf)."""

    code: int | UnsetType = UNSET
    message: str | UnsetType = UNSET
    details: list[Any] | UnsetType = UNSET


class Health(msgspec.Struct):
    status: Literal["ok"]


class Readiness(msgspec.Struct):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool]


COMPONENTS: tuple[Any, ...] = (
    TraceBodySchema,
    BatchRequest,
    BatchItem,
    OtlpRequest,
    ProjectIn,
    PlatformInSchema,
    PlatformPatch,
    KeyIn,
    ErrorBody,
    Accepted,
    BatchAnswer,
    TraceAnswer,
    TraceListAnswer,
    ExportTraceServiceResponse,
    RpcStatus,
    Project,
    Platform,
    ApiKey,
    CreatedKey,
    Health,
    Readiness,
)


def _tidy(node: Any) -> Any:
    """Docstrings become descriptions (line breaks and indentation folded); a ``$ref`` with
    keywords beside it (``Annotated[Struct, Meta(extra_json_schema=...)]``) becomes
    ``allOf: [{$ref}]`` with them — the same in JSON Schema 2020-12, and read the same by tools
    that still ignore a ``$ref``'s siblings as OpenAPI 3.0 did."""
    if isinstance(node, dict):
        tidy = {
            k: " ".join(v.split()) if k == "description" and isinstance(v, str) else _tidy(v)
            for k, v in node.items()
        }
        if "$ref" in tidy and len(tidy) > 1:
            tidy = {"allOf": [{"$ref": tidy.pop("$ref")}, *tidy.pop("allOf", [])], **tidy}
        return tidy
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def _schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(schema of each type in COMPONENTS, by name; the components)."""
    refs, components = msgspec.json.schema_components(COMPONENTS, ref_template=REF)
    names = [getattr(t, "__origin__", t).__name__ for t in COMPONENTS]  # Annotated[Struct, ...]: Struct
    return dict(zip(names, _tidy(list(refs)), strict=True)), _tidy(components)


# --------------------------------------------------------------------------------------------------
# Paths


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return _json(_ref("ErrorBody"), description, **headers)


def _otlp(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """An OTLP answer: JSON for a JSON request, protobuf for a protobuf one."""
    out = _json(schema, description, **headers)
    out["content"]["application/x-protobuf"] = {
        "schema": {**schema, "description": "The same message, protobuf-encoded (its JSON mapping shown)"}
    }
    return out


RETRY_AFTER = {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying"}
UUID_SCHEMA = msgspec.json.schema(uuid.UUID)
BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}
CONTENT_ENCODING = {
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "description": "Limits apply after decompression; case-insensitive",
    "schema": {"type": "string", "enum": ["gzip", "x-gzip", "zstd", "identity"]},
}
REQUEST_ID = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "description": "External id: the trace is upserted by it (last write wins). "
    + EXTERNAL_ID_RULE
    + "; empty means none",
    "schema": msgspec.json.schema(
        Annotated[str, Meta(max_length=EXTERNAL_ID_MAX, pattern=r"^(?!otlp:)[\x20-\x7e]*$")]
    ),
}
PUBLIC_ERRORS = {
    "400": _error(
        f"VALIDATION_ERROR: not JSON, not UTF-8, nested more than {MAX_JSON_DEPTH} levels, wrong shape, "
        "bad UUID, conflicting platform ids, undecodable gzip/zstd"
    ),
    "401": _error("MISSING_API_KEY / INVALID_API_KEY"),
    "413": _error("PAYLOAD_TOO_LARGE (MAX_BODY_BYTES, after decompression)"),
    "415": _error("UNSUPPORTED_MEDIA_TYPE: Content-Type or Content-Encoding not accepted"),
    "503": _error(
        "SERVICE_UNAVAILABLE: Kafka could not take the write in time", **{"Retry-After": RETRY_AFTER}
    ),
}


def _public_paths(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    api_key: list[dict[str, list[str]]] = [{"apiKey": []}]
    paths: dict[str, Any] = {
        "/public/traces": {
            "get": {
                "tags": ["public"],
                "summary": "The key's stored traces, newest first, a page at a time",
                "security": api_key,
                "parameters": [
                    {
                        "name": "platformId",
                        "in": "query",
                        "required": False,
                        "schema": UUID_SCHEMA,
                        "description": "Only this platform's traces (within the key's scope)",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIMIT,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "The previous page's nextCursor",
                    },
                ],
                "responses": {
                    "200": _json(schemas["TraceListAnswer"], "One page of trace summaries"),
                    "400": _error("VALIDATION_ERROR: a query parameter is malformed"),
                    "401": _error("MISSING_API_KEY / INVALID_API_KEY"),
                    "403": _error("PLATFORM_NOT_ALLOWED: platformId outside a restricted key's scope"),
                    "503": _error("SERVICE_UNAVAILABLE: the database is not reachable"),
                },
            },
            "post": {
                "tags": ["public"],
                "summary": "Send one trace; answered 202 once Kafka acknowledged it",
                "security": api_key,
                "parameters": [REQUEST_ID, CONTENT_ENCODING],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": schemas["TraceBody"]},
                        "application/x-protobuf": {
                            "schema": {**BINARY, "description": "OTLP ExportTraceServiceRequest (protobuf)"}
                        },
                        "application/octet-stream": {
                            "schema": {**BINARY, "description": "gzip of a trace body (what n8n sends)"}
                        },
                    },
                },
                "responses": {
                    "202": _json(schemas["Accepted"], "Queued: durable in Kafka"),
                    **PUBLIC_ERRORS,
                    "403": _error("PLATFORM_NOT_ALLOWED: explicit platform outside a restricted key's scope"),
                },
            },
        },
        "/public/traces/batch": {
            "post": {
                "tags": ["public"],
                "summary": "Send many traces; one result per item, answered once every queued item is "
                "acknowledged",
                "security": api_key,
                "parameters": [CONTENT_ENCODING],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schemas["BatchRequest"]}},
                },
                "responses": {
                    "207": _json(schemas["BatchAnswer"], "One result per item (queued, rejected or failed)"),
                    **PUBLIC_ERRORS,
                },
            }
        },
        "/v1/traces": {
            "post": {
                "tags": ["public"],
                "summary": "OTLP/HTTP trace export (protobuf or JSON); answered once Kafka acknowledged every "
                "trace of the request",
                "description": f"Attribute values may nest arrayValue/kvlistValue at most {MAX_VALUE_DEPTH} "
                "levels deep. Answers (errors too) are in the request's encoding.",
                "security": api_key,
                "parameters": [CONTENT_ENCODING],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-protobuf": {
                            "schema": {**BINARY, "description": "ExportTraceServiceRequest (protobuf)"}
                        },
                        "application/json": {"schema": schemas["OtlpRequest"]},
                    },
                },
                "responses": {
                    "200": _otlp(
                        schemas["ExportTraceServiceResponse"],
                        "Accepted; partialSuccess says how many spans were refused and why",
                    ),
                    "400": _otlp(schemas["RpcStatus"], "The body is not an ExportTraceServiceRequest"),
                    "401": _otlp(schemas["RpcStatus"], "Missing or invalid API key"),
                    "413": _otlp(schemas["RpcStatus"], "Larger than MAX_BODY_BYTES after decompression"),
                    "415": _otlp(schemas["RpcStatus"], "Neither application/x-protobuf nor application/json"),
                    "503": _otlp(
                        schemas["RpcStatus"],
                        "Kafka did not acknowledge in time: retry",
                        **{"Retry-After": RETRY_AFTER},
                    ),
                },
            }
        },
        **{
            f"{prefix}/v1/{signal}": {
                "post": {
                    "tags": ["public"],
                    "summary": f"OTLP {signal}: not accepted (only traces are); a 404 an exporter does not retry",
                    "security": api_key,
                    "responses": {
                        "404": _otlp(
                            schemas["RpcStatus"],
                            "Only traces are accepted: set OTEL_METRICS_EXPORTER=none / OTEL_LOGS_EXPORTER=none",
                        )
                    },
                }
            }
            for prefix in ("", "/public/traces")
            for signal in ("metrics", "logs")
        },
        "/public/traces/{id}": {
            "get": {
                "tags": ["public"],
                "summary": "What became of an accepted trace of the key's project: stored, dead-lettered, "
                "or not known yet (404)",
                "description": "The id is any id a 202 answered with. 200 with data.status 'stored' (the trace) "
                "or 'dead_lettered' (deadLetter says why and when; an operator can fix the configuration and "
                "replay it); 404 while it is neither — still queued, or not this key's to see. Answers over "
                f"{GZIP_MIN_BYTES} bytes are gzip-compressed when Accept-Encoding allows gzip.",
                "security": api_key,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": UUID_SCHEMA}],
                "responses": {
                    "200": _json(
                        schemas["TraceAnswer"],
                        "The receipt: the stored trace, or the dead letter",
                        Vary={"schema": {"type": "string"}, "description": "Accept-Encoding"},
                        **{
                            "Content-Encoding": {
                                "schema": {"type": "string", "enum": ["gzip"]},
                                "description": "gzip when the answer is large and Accept-Encoding allows it",
                            }
                        },
                    ),
                    "400": _error("VALIDATION_ERROR: the id is not a UUID"),
                    "401": _error("MISSING_API_KEY / INVALID_API_KEY"),
                    "404": _error(
                        "NOT_FOUND: neither stored nor dead-lettered for this key (still queued, or not its own)"
                    ),
                    "503": _error(
                        "SERVICE_UNAVAILABLE: the database is not reachable", **{"Retry-After": RETRY_AFTER}
                    ),
                },
            }
        },
    }
    # An SDK given OTEL_EXPORTER_OTLP_ENDPOINT=$URL/public/traces appends /v1/traces: same operation.
    paths["/public/traces/v1/traces"] = paths["/v1/traces"]
    return paths


def _admin_paths(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pid = {"name": "pid", "in": "path", "required": True, "schema": UUID_SCHEMA}
    item = {"name": "id", "in": "path", "required": True, "schema": UUID_SCHEMA}
    errors = {
        "400": _error("VALIDATION_ERROR: invalid body or path parameter"),
        "401": _error(
            "UNAUTHORIZED: missing or wrong admin token",
            **{"WWW-Authenticate": {"schema": {"type": "string"}}},
        ),
        "404": _error(
            "NOT_FOUND: no such project, platform or key (or the admin API is off: no ADMIN_TOKEN)"
        ),
    }

    def op(
        summary: str, responses: dict[str, Any], body: str | None = None, params: tuple[Any, ...] = ()
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tags": ["admin"],
            "summary": summary,
            "security": [{"adminToken": []}],
            "responses": {**responses, **errors},
        }
        if params:
            out["parameters"] = list(params)
        if body is not None:
            out["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas[body]}},
            }
            out["responses"]["413"] = _error("PAYLOAD_TOO_LARGE")
        return out

    def listing(name: str) -> dict[str, Any]:
        return _json({"type": "array", "items": schemas[name]}, f"Every {name}")

    conflict = _error("CONFLICT: name or routing id taken")
    return {
        "/admin/v1/projects": {
            "post": op(
                "Create a project",
                {"201": _json(schemas["Project"], "Created"), "409": _error("CONFLICT: name taken")},
                "ProjectIn",
            ),
            "get": op("List projects", {"200": listing("Project")}),
        },
        "/admin/v1/projects/{pid}/platforms": {
            "post": op(
                "Create a platform",
                {"201": _json(schemas["Platform"], "Created"), "409": conflict},
                "PlatformIn",
                (pid,),
            ),
            "get": op("List platforms", {"200": listing("Platform")}, params=(pid,)),
        },
        "/admin/v1/projects/{pid}/platforms/{id}": {
            "patch": op(
                "Rename a platform or change its routing ids",
                {"200": _json(schemas["Platform"], "Updated"), "409": conflict},
                "PlatformPatch",
                (pid, item),
            ),
            "delete": op("Delete a platform", {"204": {"description": "Deleted"}}, params=(pid, item)),
        },
        "/admin/v1/projects/{pid}/keys": {
            "post": op(
                "Create an API key (the full key is in this answer only)",
                {"201": _json(schemas["CreatedKey"], "Created")},
                "KeyIn",
                (pid,),
            ),
            "get": op("List API keys (masked)", {"200": listing("ApiKey")}, params=(pid,)),
        },
        "/admin/v1/projects/{pid}/keys/{id}": {
            "delete": op(
                "Revoke (permanently delete) an API key",
                {"204": {"description": "Revoked"}},
                params=(pid, item),
            ),
        },
    }


def _service_paths(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "/healthz": {"get": {"summary": "Alive", "responses": {"200": _json(schemas["Health"], "Alive")}}},
        "/health": {
            "get": {
                "summary": "Alive (the path Mibo's n8n node checks credentials against)",
                "responses": {"200": _json(schemas["Health"], "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Kafka producer and key registry ready",
                "responses": {
                    "200": _json(schemas["Readiness"], "Ready"),
                    "503": _json(schemas["Readiness"], "Not ready: checks says what is missing"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    schemas, components = _schemas()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mibo-ingest",
            "version": "1",
            "description": "Trace ingestion compatible with Mibo's public trace API, and its admin API. "
            "Errors are {success: false, timestamp, error: {code, message, details}} (ErrorBody) "
            "everywhere but on /v1/traces, which answers as OTLP/HTTP does (google.rpc.Status). "
            f"Every JSON body must be UTF-8 and may nest at most {MAX_JSON_DEPTH} levels deep.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": {**_public_paths(schemas), **_admin_paths(schemas), **_service_paths(schemas)},
    }
