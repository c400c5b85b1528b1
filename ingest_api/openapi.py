"""``GET /openapi.json``: the whole public and admin API as an OpenAPI 3.1 document."""

from __future__ import annotations

from functools import cache
from typing import Any

REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


UUID = {"type": "string", "format": "uuid"}
OTLP_SERVICE_NAME = {
    "type": ["string", "null"],
    "description": "OpenTelemetry traces whose resource service.name is this value route to the platform "
    "(any type; unique within the project)",
}
TIME = {"type": "string", "format": "date-time"}
ADMIN_ERRORS = {
    "400": _error("Invalid body or path parameter"),
    "401": _error("Missing or wrong admin token"),
    "404": _error("Not found, or the admin API is off (no ADMIN_TOKEN)"),
}

SCHEMAS: dict[str, Any] = {
    "Detail": {
        "type": "object",
        "required": ["type", "msg", "path", "location"],
        "properties": {
            "type": {"type": "string"},
            "msg": {"type": "string"},
            "path": {"type": "string"},
            "location": {"type": "string", "enum": ["body", "header", "path", "query", "server"]},
        },
    },
    "Error": {
        "type": "object",
        "required": ["success", "timestamp", "error"],
        "properties": {
            "success": {"const": False},
            "timestamp": TIME,
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": _ref("Detail")},
                },
            },
        },
    },
    "Span": {
        "type": "object",
        "required": ["span_id", "name"],
        "properties": {
            "span_id": {"type": "string", "minLength": 1},
            "name": {"type": "string", "minLength": 1},
            "parent_span_id": {"type": ["string", "null"]},
            "attributes": {"type": ["object", "null"]},
            "start_time_unix_nano": {"type": ["string", "integer", "null"], "pattern": "^[0-9]{1,20}$"},
            "end_time_unix_nano": {"type": ["string", "integer", "null"], "pattern": "^[0-9]{1,20}$"},
            "status": {
                "type": ["object", "null"],
                "required": ["code"],
                "properties": {
                    "code": {"type": "integer", "enum": [0, 1, 2]},
                    "message": {"type": ["string", "null"]},
                },
            },
            "events": {"type": ["array", "null"]},
        },
    },
    "TraceCommon": {
        "type": "object",
        "properties": {
            "metadata": {
                "type": ["object", "null"],
                "description": "Routing hints: workflowId (n8n), chatflowId (Flowise), mibo.platform_id",
            },
            "externalMetadata": {"type": ["object", "null"]},
            "platformId": {**UUID, "type": ["string", "null"]},
        },
    },
    "TraceBody": {
        "oneOf": [
            {
                "title": "canonical",
                "allOf": [
                    _ref("TraceCommon"),
                    {
                        "type": "object",
                        "required": ["spans"],
                        "properties": {"spans": {"type": "array", "minItems": 1, "items": _ref("Span")}},
                    },
                ],
            },
            {
                "title": "legacy",
                "allOf": [
                    _ref("TraceCommon"),
                    {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"not": {"type": "null"}}},
                    },
                ],
            },
        ]
    },
    "OtlpTraceRequest": {
        "type": "object",
        "required": ["resourceSpans"],
        "description": "An OTLP ExportTraceServiceRequest in OTLP's JSON mapping (hex trace and span ids, "
        "nanosecond times as strings); split into one trace per OTLP trace id",
        "properties": {"resourceSpans": {"type": "array", "items": {"type": "object"}}},
    },
    "OtlpStatus": {
        "type": "object",
        "description": "google.rpc.Status (JSON mapping; protobuf when the request was protobuf)",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
    },
    "ExportTraceServiceResponse": {
        "type": "object",
        "description": "OTLP's answer (JSON mapping; protobuf when the request was protobuf)",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "properties": {
                    "rejectedSpans": {"type": ["string", "integer"]},
                    "errorMessage": {"type": "string"},
                },
            }
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["success", "message", "timestamp", "data"],
        "properties": {
            "success": {"const": True},
            "message": {"type": "string"},
            "timestamp": TIME,
            "data": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {
                    "id": UUID,
                    "externalId": {"type": ["string", "null"]},
                    "platformId": {**UUID, "type": ["string", "null"]},
                    "status": {"const": "queued"},
                    "createdAt": TIME,
                    "traces": {
                        "type": "array",
                        "description": "OTLP bodies only: every trace queued (data.id is the first's)",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": UUID,
                                "externalId": {"type": "string"},
                                "traceId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                                "platformId": {**UUID, "type": ["string", "null"]},
                                "spans": {"type": "integer"},
                            },
                        },
                    },
                    "acceptedSpans": {"type": "integer", "description": "OTLP bodies only"},
                    "rejectedSpans": {"type": "integer", "description": "OTLP bodies only"},
                    "rejected": {
                        "type": "array",
                        "description": "OTLP bodies only: refused spans and why",
                        "items": {
                            "type": "object",
                            "properties": {"spans": {"type": "integer"}, "reason": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
    "BatchItem": {
        "allOf": [
            _ref("TraceBody"),
            {"type": "object", "properties": {"externalId": {"type": "string", "maxLength": 255}}},
        ]
    },
    "BatchBody": {
        "type": "object",
        "required": ["traces"],
        "properties": {"traces": {"type": "array", "minItems": 1, "items": _ref("BatchItem")}},
    },
    "BatchResult": {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer"},
            "status": {"type": "string", "enum": ["queued", "rejected", "failed"]},
            "id": UUID,
            "externalId": {"type": ["string", "null"]},
            "platformId": {**UUID, "type": ["string", "null"]},
            "error": {"$ref": REF + "Error/properties/error"},
        },
    },
    "BatchAnswer": {
        "type": "object",
        "required": ["success", "message", "timestamp", "data"],
        "properties": {
            "success": {"type": "boolean", "description": "true when every item was queued"},
            "message": {"type": "string"},
            "timestamp": TIME,
            "data": {
                "type": "object",
                "required": ["accepted", "rejected", "results"],
                "properties": {
                    "accepted": {"type": "integer"},
                    "rejected": {"type": "integer"},
                    "results": {"type": "array", "items": _ref("BatchResult")},
                },
            },
        },
    },
    "Project": {
        "type": "object",
        "required": ["id", "name", "created_at"],
        "properties": {"id": UUID, "name": {"type": "string"}, "created_at": TIME},
    },
    "PlatformType": {"type": "string", "enum": ["n8n", "flowise", "http_api", "custom"]},
    "Platform": {
        "type": "object",
        "required": [
            "id",
            "project_id",
            "name",
            "type",
            "workflow_id",
            "chatflow_id",
            "otlp_service_name",
            "created_at",
        ],
        "properties": {
            "id": UUID,
            "project_id": UUID,
            "name": {"type": "string"},
            "type": _ref("PlatformType"),
            "workflow_id": {"type": ["string", "null"]},
            "chatflow_id": {"type": ["string", "null"]},
            "otlp_service_name": OTLP_SERVICE_NAME,
            "created_at": TIME,
        },
    },
    "PlatformRef": {
        "type": "object",
        "required": ["id", "name"],
        "properties": {"id": UUID, "name": {"type": "string"}},
    },
    "KeyCommon": {
        "type": "object",
        "required": [
            "id",
            "project_id",
            "name",
            "masked",
            "restricted",
            "platform_ids",
            "platforms",
            "created_at",
        ],
        "properties": {
            "id": UUID,
            "project_id": UUID,
            "name": {"type": "string"},
            "masked": {"type": "string", "examples": ["mibo_...a1b2"]},
            "restricted": {
                "type": "boolean",
                "description": "false: all platforms of the project; true: only platform_ids (possibly none left)",
            },
            "platform_ids": {"type": "array", "items": UUID},
            "platforms": {"type": "array", "items": _ref("PlatformRef")},
            "created_at": TIME,
        },
    },
    "ApiKey": {
        "allOf": [
            _ref("KeyCommon"),
            {
                "type": "object",
                "required": ["last_used_at"],
                "properties": {"last_used_at": {"type": ["string", "null"], "format": "date-time"}},
            },
        ]
    },
    "CreatedKey": {
        "allOf": [
            _ref("KeyCommon"),
            {
                "type": "object",
                "required": ["key"],
                "properties": {"key": {"type": "string", "description": "the full key, returned only here"}},
            },
        ]
    },
}


def _admin_paths() -> dict[str, Any]:
    pid = {"name": "pid", "in": "path", "required": True, "schema": UUID}
    item = {"name": "id", "in": "path", "required": True, "schema": UUID}
    security = [{"adminToken": []}]
    named = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    platform_in = {
        "type": "object",
        "required": ["name", "type"],
        "properties": {
            "name": {"type": "string"},
            "type": _ref("PlatformType"),
            "workflow_id": {"type": ["string", "null"]},
            "chatflow_id": {"type": ["string", "null"]},
            "otlp_service_name": OTLP_SERVICE_NAME,
        },
    }
    platform_patch = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "workflow_id": {"type": ["string", "null"]},
            "chatflow_id": {"type": ["string", "null"]},
            "otlp_service_name": OTLP_SERVICE_NAME,
        },
    }
    key_in = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "platform_ids": {"type": "array", "items": UUID}},
    }

    def op(
        summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None, params=()
    ) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        out: dict[str, Any] = {
            "tags": ["admin"],
            "summary": summary,
            "security": security,
            "responses": {**responses, **ADMIN_ERRORS},
        }
        if params:
            out["parameters"] = list(params)
        if body is not None:
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        return out

    def listing(name: str) -> dict[str, Any]:
        return _json({"type": "array", "items": _ref(name)}, f"All {name.lower()}s")

    return {
        "/admin/v1/projects": {
            "post": op(
                "Create a project",
                {"201": _json(_ref("Project"), "Created"), "409": _error("Name taken")},
                named,
            ),
            "get": op("List projects", {"200": listing("Project")}),
        },
        "/admin/v1/projects/{pid}/platforms": {
            "post": op(
                "Create a platform",
                {"201": _json(_ref("Platform"), "Created"), "409": _error("Name or routing id taken")},
                platform_in,
                [pid],
            ),
            "get": op("List platforms", {"200": listing("Platform")}, params=[pid]),
        },
        "/admin/v1/projects/{pid}/platforms/{id}": {
            "patch": op(
                "Rename a platform or change its routing ids",
                {"200": _json(_ref("Platform"), "Updated"), "409": _error("Name or routing id taken")},
                platform_patch,
                [pid, item],
            ),
            "delete": op("Delete a platform", {"204": {"description": "Deleted"}}, params=[pid, item]),
        },
        "/admin/v1/projects/{pid}/keys": {
            "post": op(
                "Create an API key (the full key is in this answer only)",
                {"201": _json(_ref("CreatedKey"), "Created")},
                key_in,
                [pid],
            ),
            "get": op("List API keys (masked)", {"200": listing("ApiKey")}, params=[pid]),
        },
        "/admin/v1/projects/{pid}/keys/{id}": {
            "delete": op(
                "Revoke (permanently delete) an API key",
                {"204": {"description": "Revoked"}},
                params=[pid, item],
            ),
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    public_headers = [
        {
            "name": "x-api-key",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^mibo_"},
        },
        {
            "name": "x-request-id",
            "in": "header",
            "required": False,
            "description": "External id: the trace is upserted by it within the project (last write wins)",
            "schema": {"type": "string", "maxLength": 255},
        },
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": ["gzip", "zstd", "identity"]},
        },
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mibo-ingest",
            "version": "1",
            "description": "Trace ingestion compatible with Mibo's public trace API, and its admin API.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": {
            "/public/traces": {
                "post": {
                    "tags": ["public"],
                    "summary": "Send one trace; answered 202 once Kafka acknowledged it",
                    "security": [{"apiKey": []}],
                    "parameters": public_headers,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [_ref("TraceBody"), _ref("OtlpTraceRequest")]}
                            },
                            "application/x-protobuf": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "OTLP ExportTraceServiceRequest (protobuf)",
                                }
                            },
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "gzip of a TraceBody",
                                }
                            },
                        },
                    },
                    "responses": {
                        "202": _json(_ref("Accepted"), "Queued: durable in Kafka"),
                        "400": _error(
                            "VALIDATION_ERROR: not JSON, wrong shape, bad UUID, conflicting platform ids"
                        ),
                        "401": _error("MISSING_API_KEY / INVALID_API_KEY"),
                        "403": _error(
                            "PLATFORM_NOT_ALLOWED: explicit platform outside a restricted key's scope"
                        ),
                        "413": _error("PAYLOAD_TOO_LARGE (limit applies after decompression)"),
                        "415": _error("UNSUPPORTED_MEDIA_TYPE"),
                        "503": {
                            **_error("SERVICE_UNAVAILABLE: Kafka could not take the write in time"),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        },
                    },
                }
            },
            "/public/traces/batch": {
                "post": {
                    "tags": ["public"],
                    "summary": "Send many traces; one result per item, answered once all queued items are acknowledged",
                    "security": [{"apiKey": []}],
                    "parameters": [p for p in public_headers if p["name"] != "x-request-id"],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("BatchBody")}},
                    },
                    "responses": {
                        "207": _json(_ref("BatchAnswer"), "One result per item (queued, rejected or failed)"),
                        "400": _error("VALIDATION_ERROR: not {traces: [...]}, or too many items"),
                        "401": _error("MISSING_API_KEY / INVALID_API_KEY"),
                        "413": _error("PAYLOAD_TOO_LARGE"),
                        "415": _error("UNSUPPORTED_MEDIA_TYPE"),
                        "503": _error("SERVICE_UNAVAILABLE: no item could be queued"),
                    },
                }
            },
            "/v1/traces": {
                "post": {
                    "tags": ["public"],
                    "summary": "OTLP/HTTP trace export (protobuf or JSON); answered once Kafka acknowledged "
                    "every trace of the request",
                    "security": [{"apiKey": []}],
                    "parameters": [public_headers[0], public_headers[2]],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-protobuf": {
                                "schema": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "ExportTraceServiceRequest",
                                }
                            },
                            "application/json": {"schema": _ref("OtlpTraceRequest")},
                        },
                    },
                    "responses": {
                        "200": _json(
                            _ref("ExportTraceServiceResponse"),
                            "Accepted; partialSuccess says how many spans were refused and why",
                        ),
                        "400": _json(_ref("OtlpStatus"), "The body is not an ExportTraceServiceRequest"),
                        "401": _json(_ref("OtlpStatus"), "Missing or invalid API key"),
                        "413": _json(_ref("OtlpStatus"), "Larger than MAX_BODY_BYTES after decompression"),
                        "415": _json(
                            _ref("OtlpStatus"), "Neither application/x-protobuf nor application/json"
                        ),
                        "503": {
                            **_json(_ref("OtlpStatus"), "Kafka did not acknowledge in time: retry"),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        },
                    },
                }
            },
            "/public/traces/{id}": {
                "get": {
                    "tags": ["public"],
                    "summary": "A stored trace of the key's project (404 until stored, or for another project's)",
                    "security": [{"apiKey": []}],
                    "parameters": [
                        public_headers[0],
                        {"name": "id", "in": "path", "required": True, "schema": UUID},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["success", "message", "timestamp", "data"],
                                "properties": {
                                    "success": {"const": True},
                                    "message": {"type": "string"},
                                    "timestamp": TIME,
                                    "data": {
                                        "type": "object",
                                        "properties": {
                                            "id": UUID,
                                            "platformId": UUID,
                                            "externalId": {"type": ["string", "null"]},
                                            "bodyShape": {
                                                "type": "string",
                                                "enum": ["spans", "data", "otlp"],
                                            },
                                            "payload": {"type": "object", "description": "the body as sent"},
                                            "metadata": {"type": ["object", "null"]},
                                            "externalMetadata": {"type": ["object", "null"]},
                                            "receivedAt": TIME,
                                            "createdAt": TIME,
                                            "updatedAt": TIME,
                                        },
                                    },
                                },
                            },
                            "The stored trace",
                        ),
                        "400": _error("VALIDATION_ERROR: the id is not a UUID"),
                        "401": _error("MISSING_API_KEY / INVALID_API_KEY"),
                        "404": _error("NOT_FOUND: no such trace for this key (or not stored yet)"),
                        "503": _error("SERVICE_UNAVAILABLE: the database is not reachable"),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {
                "get": {
                    "summary": "Kafka producer and key registry ready",
                    "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
            **_admin_paths(),
        },
    }
