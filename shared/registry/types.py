"""What the registry's functions return (also the admin API's JSON bodies, encoded as they are)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal, get_args

import msgspec

PlatformType = Literal["n8n", "flowise", "http_api", "custom"]
PLATFORM_TYPES: tuple[str, ...] = get_args(PlatformType)


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    created_at: dt.datetime


class Platform(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    type: str
    workflow_id: str | None
    chatflow_id: str | None
    otlp_service_name: str | None  # routes OTLP traces whose resource has this service.name
    created_at: dt.datetime


class PlatformRef(msgspec.Struct, frozen=True):
    """A platform in a key's scope: its id and, for humans, its name."""

    id: uuid.UUID
    name: str


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listings show it: never the key itself, only ``mibo_...`` + its last 4 characters.

    ``restricted`` tells an unrestricted key (``platform_ids == []``, all platforms of the project)
    from a restricted key whose platforms were all deleted (``platform_ids == []``, no platform).
    """

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    masked: str
    restricted: bool
    platform_ids: list[uuid.UUID]
    platforms: list[PlatformRef]
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to :func:`create_key`: the only object that ever holds the full key."""

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    key: str
    masked: str
    restricted: bool
    platform_ids: list[uuid.UUID]
    platforms: list[PlatformRef]
    created_at: dt.datetime
