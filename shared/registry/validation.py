"""Input checks shared by the registry's operations: names, routing identifiers, types, ids.

Pure functions; each refusal is an :class:`~shared.registry.errors.InvalidInput` naming the field.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

from shared.registry.errors import invalid
from shared.registry.types import PLATFORM_TYPES
from shared.runtime.logging import KEY_PATTERN, REDACTED

MAX_NAME_LENGTH = 200
MAX_IDENTIFIER_LENGTH = 200


def clean_name(value: str, path: str = "name") -> str:
    """Names are for humans: surrounding whitespace is dropped, control characters refused."""
    name = value.strip()
    if not name:
        raise invalid(path, f"{path} must not be empty", "missing")
    if len(name) > MAX_NAME_LENGTH:
        raise invalid(path, f"{path} is longer than {MAX_NAME_LENGTH} characters")
    if has_control_characters(name):
        raise invalid(path, f"{path} must not contain control characters")
    return name


def check_identifier(value: str | None, path: str) -> str | None:
    """Routing identifiers are compared exactly with trace metadata, so they are never altered:
    a value with surrounding whitespace is refused rather than silently trimmed."""
    if value is None:
        return None
    if not value.strip():
        raise invalid(path, f"{path} must not be empty (leave it out, or null, for none)", "missing")
    if value != value.strip():
        raise invalid(path, f"{path} must not start or end with whitespace")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise invalid(path, f"{path} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    if has_control_characters(value):
        raise invalid(path, f"{path} must not contain control characters")
    return value


def q(text: str | None) -> str:
    """A user-given value quoted in a message, so spaces and empty strings stay visible. Anything
    shaped like an API key is redacted: a key pasted in the wrong place must not be echoed back."""
    return '"' + KEY_PATTERN.sub(REDACTED, str(text)).replace('"', '\\"') + '"'


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def check_platform_type(type_: str) -> str:
    if type_ not in PLATFORM_TYPES:
        raise invalid(
            "type", f"unknown platform type {q(type_)}; expected one of: {', '.join(PLATFORM_TYPES)}", "enum"
        )
    return type_


def check_identifiers_match_type(type_: str, workflow_id: str | None, chatflow_id: str | None) -> None:
    if workflow_id is not None and type_ != "n8n":
        raise invalid("workflow_id", f"workflow_id is only for n8n platforms, not {type_}")
    if chatflow_id is not None and type_ != "flowise":
        raise invalid("chatflow_id", f"chatflow_id is only for flowise platforms, not {type_}")


def parse_uuid(value: str, path: str = "id") -> uuid.UUID:
    """A UUID given as text (CLI argument, URL segment), or a precise validation error."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid(path, f"{path} is not a valid UUID: {q(value)}", "uuid_parsing") from None


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def one(row: Any) -> Any:
    """The row a RETURNING or aggregate query always yields (asserted, for the type checker too)."""
    assert row is not None
    return row
