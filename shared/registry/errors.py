"""Refused registry operations: one exception per HTTP status, each with precise details.

``status`` and ``code`` are what the admin API answers with; the CLI prints ``message`` and exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class Problem(msgspec.Struct, frozen=True):
    """One precise reason a request was refused; ``path`` names the offending field."""

    type: str
    msg: str
    path: str = ""


class ManagementError(Exception):
    """A refused operation. ``status`` and ``code`` are what the HTTP API answers with."""

    status = 400
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, details: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


class InvalidInput(ManagementError):
    """The request itself is wrong: empty name, unknown type, identifier on the wrong type, ..."""

    status = 400
    code = "VALIDATION_ERROR"


class NotFound(ManagementError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ManagementError):
    """The request collides with existing data (a name or routing identifier already taken)."""

    status = 409
    code = "CONFLICT"


def invalid(path: str, msg: str, type_: str = "value_error") -> InvalidInput:
    return InvalidInput(msg, [Problem(type_, msg, path)])
