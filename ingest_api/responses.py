"""Mibo's response envelope (SPEC §3), so existing clients keep working.

Success: ``{"success": true, "message", "timestamp", "data"}``.
Error: ``{"success": false, "timestamp", "error": {"code", "message", "details": [...]}}`` where
each detail is ``{"type", "msg", "path", "location"}``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import structlog
from aiohttp import web

_encoder = msgspec.json.Encoder()

ERROR_CODE = web.RequestKey("error_code", str)  # read by the request counter


class Detail(msgspec.Struct, frozen=True):
    type: str
    msg: str
    path: str = ""
    location: str = "body"


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
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


def success(data: Any, message: str, status: int = 200) -> web.Response:
    return json_response(
        {"success": True, "message": message, "timestamp": now_iso(), "data": data}, status=status
    )


def error_body(code: str, message: str, details: list[Detail] | None = None) -> dict[str, Any]:
    return {
        "success": False,
        "timestamp": now_iso(),
        "error": {"code": code, "message": message, "details": details or []},
    }


def error_response(err: ApiError) -> web.Response:
    return json_response(
        error_body(err.code, err.message, err.details), status=err.status, headers=err.headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in the envelope: our ApiErrors, aiohttp's own (404, 405), and crashes."""
    try:
        return await handler(request)
    except ApiError as err:
        request[ERROR_CODE] = err.code
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}.get(
            exc.status, "HTTP_ERROR"
        )
        request[ERROR_CODE] = code
        return error_response(ApiError(exc.status, code, exc.reason))
    except Exception:
        structlog.get_logger().exception("unhandled error", path=request.path, method=request.method)
        request[ERROR_CODE] = "INTERNAL_SERVER_ERROR"
        return error_response(ApiError(500, "INTERNAL_SERVER_ERROR", "Internal server error"))
