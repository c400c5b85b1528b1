"""Mibo's response envelope (SPEC §3), so existing clients keep working.

Success: ``{"success": true, "message", "timestamp", "data"}``.
Error: ``{"success": false, "timestamp", "error": {"code", "message", "details": [...]}}`` where
each detail is ``{"type", "msg", "path", "location"}``.

The error middleware is the one place a request's failure becomes an answer, and every client
input ends in a 4xx there: our ``ApiError``s, aiohttp's own refusals (404, 405 with ``Allow``, 413),
a malformed body stream (400), and a client that hung up before its body arrived (logged at info
and counted as 499 ``CLIENT_CLOSED_REQUEST``: nobody is left to read an answer). Only a bug of
ours reaches the 500 branch. Answers keep the route's own format: ``google.rpc.Status`` on OTLP's
``/v1/traces``, the Mibo envelope everywhere else.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
import structlog
from aiohttp import http_exceptions, web
from msgspec import Meta

from shared.contracts.times import iso_utc

_encoder = msgspec.json.Encoder()
log = structlog.get_logger(__name__)

ERROR_CODE = web.RequestKey("error_code", str)  # read by the request counter
OTLP_PATHS = frozenset(
    f"{prefix}/v1/{signal}" for prefix in ("", "/public/traces") for signal in ("traces", "metrics", "logs")
)
"""Paths that answer in OTLP's google.rpc.Status, not the Mibo envelope: the OTLP/HTTP signal paths,
also under ``/public/traces`` (an SDK given ``OTEL_EXPORTER_OTLP_ENDPOINT=$URL/public/traces``
appends ``/v1/traces``)."""
CLIENT_CLOSED_STATUS = 499  # nginx's "client closed request": counted, never sent to anyone
CLIENT_CLOSED = "CLIENT_CLOSED_REQUEST"

LOCATIONS = ("body", "header", "path", "query", "server")
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]


class Detail(msgspec.Struct, frozen=True):
    """Where and why: ``path`` names the field (``spans[0].span_id``), header or path segment."""

    type: str
    msg: str
    path: str = ""
    location: Annotated[str, Meta(extra_json_schema={"enum": list(LOCATIONS)})] = "body"  # one of LOCATIONS


_MSGSPEC_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_BACKTICKED = re.compile(r"`([^`]*)`")


def detail_from_msgspec(exc: msgspec.MsgspecError, rules: Mapping[str, str] | None = None) -> Detail:
    """One msgspec error as an API detail — the one translation every JSON route uses.

    msgspec says e.g. "Expected `str`, got `int` - at `$.spans[0].name`": the sentence is kept and
    the field path named (``spans[0].name``); a missing or unknown field is named by the message
    itself (``spans[0].span_id``). ``rules``: field path → the rule in words, said instead of a
    regular expression or a length bound. Invalid JSON (not a validation error) is ``json_invalid``."""
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return Detail("json_invalid", f"Body is not valid JSON: {text}", "", "body")
    match = _MSGSPEC_AT.match(text)
    msg = match["msg"] if match else text
    path = ((match and match["path"]) or "").lstrip(".")
    kind = "value_error"
    if msg.startswith(("Object missing required field", "Object contains unknown field")):
        kind = "missing" if "missing" in msg else "unknown_field"
        field = _BACKTICKED.search(msg)
        if field:
            path = f"{path}.{field[1]}" if path else field[1]
    elif (
        rules
        and path in rules
        and msg.startswith(("Expected `str` matching regex", "Expected `str` of length"))
    ):
        msg = f"{path} must be {rules[path]}"  # the rule, not the regex
    elif ", got `" in msg:  # "Expected `str`, got `int`"; a broken constraint stays value_error
        kind = "type_error"
    return Detail(kind, msg, path, "body")


class ErrorInfo(msgspec.Struct):
    code: str
    message: str
    details: list[Detail]


class ErrorBody(msgspec.Struct):
    """Every error of the public and admin API."""

    success: Annotated[bool, Meta(extra_json_schema={"const": False})]
    timestamp: Timestamp
    error: ErrorInfo


class ApiError(Exception):
    """Raised by a step; the error middleware turns it into the envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Detail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def now_iso() -> str:
    return iso_utc(dt.datetime.now(dt.UTC))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


def success(data: Any, message: str, status: int = 200) -> web.Response:
    return json_response(
        {"success": True, "message": message, "timestamp": now_iso(), "data": data}, status=status
    )


def error_body(code: str, message: str, details: list[Detail] | None = None) -> ErrorBody:
    return ErrorBody(False, now_iso(), ErrorInfo(code, message, details or []))


def error_response(err: ApiError) -> web.Response:
    return json_response(
        error_body(err.code, err.message, err.details), status=err.status, headers=err.headers
    )


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusals (no route, wrong method, body over client_max_size) as an ApiError;
    a 405 keeps its ``Allow`` header (RFC 9110 §15.5.6)."""
    code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
    headers: dict[str, str] = {}
    details: list[Detail] = []
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        headers["Allow"] = allowed
        message = f"This method is not allowed on this path; allowed: {allowed or 'none'}"
        details.append(Detail("method_not_allowed", message, "", "path"))
    elif exc.status == 404:
        # neither path nor method is echoed: a key pasted into a URL must not come back
        details.append(Detail("not_found", "No such route", "", "path"))
    elif exc.status == 413:
        details.append(Detail("too_large", "The body exceeds the size limit", "", "body"))
    return ApiError(exc.status, code, exc.reason, details, headers)


def _answer(request: web.Request, err: ApiError) -> web.Response:
    request[ERROR_CODE] = err.code
    if request.path in OTLP_PATHS:
        # imported here: both modules import this one
        from ingest_api.content import is_protobuf
        from ingest_api.endpoints.otlp import status_response

        encoding: Literal["json", "protobuf"] = (
            "protobuf" if is_protobuf(request.headers.get("Content-Type", "")) else "json"
        )
        return status_response(err, encoding)
    return error_response(err)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in the route's format; see the module docstring for the cases."""
    try:
        return await handler(request)
    except Exception as exc:
        return failure_response(request, exc)


def failure_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a handler's failure ``exc`` (re-raised when it is not one: a redirect)."""
    if isinstance(exc, ApiError):
        return _answer(request, exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _answer(request, _from_http_exception(exc))
    if isinstance(exc, http_exceptions.HttpProcessingError):  # a body stream aiohttp could not parse
        message = f"Malformed request body: {exc.message}"
        return _answer(request, ApiError(400, "VALIDATION_ERROR", message, [Detail("malformed", message)]))
    if isinstance(
        exc, ConnectionResetError
    ):  # aiohttp's ClientConnectionResetError ("Connection lost") is one
        if not _client_gone(request):
            return _crash(request)
        log.info(
            "client disconnected before the request was answered", path=request.path, method=request.method
        )
        request[ERROR_CODE] = CLIENT_CLOSED
        return web.Response(status=CLIENT_CLOSED_STATUS, reason="Client Closed Request")
    return _crash(request)


def _crash(request: web.Request) -> web.Response:
    log.exception("unhandled error", path=request.path, method=request.method)
    return _answer(request, ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error"))
