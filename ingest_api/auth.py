"""Authentication and the one routing check that is a security boundary (SPEC §3).

Unknown, malformed and revoked keys look the same to the caller (401 INVALID_API_KEY). An explicit
platform outside a restricted key's scope is refused here (403); anything configuration could
still fix (unknown platform for an unrestricted key, ambiguity) is left to the router.
"""

from __future__ import annotations

import uuid

from ingest_api.key_registry import KeyRegistry
from ingest_api.responses import ApiError, Detail
from shared.registry import KeyInfo

API_KEY_HEADER = "x-api-key"


async def authenticate(registry: KeyRegistry, presented: str | None) -> KeyInfo:
    if not presented:
        raise ApiError(
            401,
            "MISSING_API_KEY",
            "API key is required: send it in the x-api-key header",
            [Detail("missing", "x-api-key header is missing", API_KEY_HEADER, "header")],
        )
    info = await registry.authenticate(presented.strip())
    if info is None:
        raise ApiError(
            401,
            "INVALID_API_KEY",
            "Invalid API key",
            [Detail("invalid", "The API key is unknown or was revoked", API_KEY_HEADER, "header")],
        )
    return info


def allowed(key: KeyInfo, platform_id: uuid.UUID | None) -> bool:
    """May ``key`` name ``platform_id`` explicitly? (No platform named: yes, the router decides.)"""
    return platform_id is None or not key.restricted or platform_id in key.platform_ids


def check_scope(key: KeyInfo, platform_id: uuid.UUID | None) -> None:
    """403 when a restricted key names a platform it may not send to."""
    if allowed(key, platform_id):
        return
    raise ApiError(
        403,
        "PLATFORM_NOT_ALLOWED",
        f"This API key is restricted to specific platforms and platform {platform_id} is not allowed",
        [
            Detail(
                "platform_not_allowed", "The key's scope does not include this platform", "platformId", "body"
            )
        ],
    )


def known_platform(key: KeyInfo, platform_id: uuid.UUID | None) -> uuid.UUID | None:
    """The platform already known at ingest: explicit, or the only one a restricted key allows."""
    if platform_id is not None:
        return platform_id
    if key.restricted and len(key.platform_ids) == 1:
        return next(iter(key.platform_ids))
    return None
