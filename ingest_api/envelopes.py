"""The traces.raw envelope of an accepted trace: who sent it, its routing inputs, its body."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from ingest_api.body import ParsedBody
from shared.contracts.envelope import BodyShape, Hints, RawEnvelope
from shared.contracts.ids import uuid7
from shared.registry import KeyInfo


def envelope_for(
    key: KeyInfo,
    body: bytes,
    *,
    shape: BodyShape,
    platform_id: uuid.UUID | None,
    hints: Hints,
    external_id: str | None,
    received_at: dt.datetime | None = None,
) -> RawEnvelope:
    """The traces.raw envelope of one trace sent with ``key`` (a new UUIDv7 trace id)."""
    return RawEnvelope(
        trace_id=uuid7(),
        received_at=received_at or dt.datetime.now(dt.UTC),
        project_id=key.project_id,
        key_id=key.id,
        key_restricted=key.restricted,
        key_scope=sorted(key.platform_ids),
        external_id=external_id,
        shape=shape,
        platform_id=platform_id,
        hints=hints,
        body=msgspec.Raw(body),
    )


def build_envelope(key: KeyInfo, parsed: ParsedBody, body: bytes, external_id: str | None) -> RawEnvelope:
    return envelope_for(
        key,
        body,
        shape=parsed.shape,
        platform_id=parsed.platform_id,
        hints=parsed.hints,
        external_id=external_id,
    )
