"""Routing hints as real clients send them: every spelling, with a clear precedence (pure).

The n8n node's legacy body carries ``metadata.workflowId`` and ``externalMetadata.workflowId``;
its auto-detect body sends snake_case ``metadata.workflow_id``; Flowise templates send
``metadata.chatflowId`` (also seen: ``chatflowid``, ``chatflow_id``). The router reads them from
the trace body itself, not only from what the ingest API extracted, so a dead letter written
before a spelling was understood routes correctly when replayed.

Precedence, first found wins: ``metadata`` before ``externalMetadata``; within one object the
documented camelCase before the other spellings. A later spelling that disagrees is reported (it
appears in the dead-letter detail), never silently merged. OTLP hints (``service.name``) come from
the envelope: an OTLP body is the canonical trace, without metadata.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.contracts import otlp
from shared.contracts.envelope import Hints, RawEnvelope

WORKFLOW_SPELLINGS = ("workflowId", "workflow_id")
CHATFLOW_SPELLINGS = ("chatflowId", "chatflowid", "chatflow_id")
OBJECTS = ("metadata", "externalMetadata")


class ReadHints(msgspec.Struct, frozen=True):
    """The hints a trace carries, where each was read, and the spellings that disagreed."""

    hints: Hints
    sources: dict[str, str] = {}  # "workflowId" -> "metadata.workflow_id"
    disagreements: tuple[str, ...] = ()


class _Metadata(msgspec.Struct):
    metadata: Any = None
    externalMetadata: Any = None  # the wire name


_decoder = msgspec.json.Decoder(_Metadata)


def _value(raw: Any) -> str | None:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    text = str(raw)
    return text or None


def _first(
    objects: dict[str, Any], spellings: tuple[str, ...], label: str
) -> tuple[str | None, str, list[str]]:
    """The hint by precedence, where it was read, and notes on spellings that disagree with it."""
    found: list[tuple[str, str]] = []
    for name in OBJECTS:
        obj = objects.get(name)
        if not isinstance(obj, dict):
            continue
        for spelling in spellings:
            value = _value(obj.get(spelling))
            if value is not None:
                found.append((value, f"{name}.{spelling}"))
    if not found:
        return None, "", []
    value, where = found[0]
    notes = [
        f"{other_where} {other!r} disagrees with {where} {value!r} ({label} read from {where})"
        for other, other_where in found[1:]
        if other != value
    ]
    return value, where, notes


def read_hints(envelope: RawEnvelope) -> ReadHints:
    """The envelope's hints, completed from its body's metadata in every spelling."""
    if envelope.shape == otlp.SHAPE:
        return ReadHints(envelope.hints, {"service.name": "resource"} if envelope.hints.service_name else {})
    try:
        body = _decoder.decode(envelope.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = _Metadata()
    objects = {"metadata": body.metadata, "externalMetadata": body.externalMetadata}
    workflow, workflow_at, workflow_notes = _first(objects, WORKFLOW_SPELLINGS, "workflowId")
    chatflow, chatflow_at, chatflow_notes = _first(objects, CHATFLOW_SPELLINGS, "chatflowId")
    hints = Hints(
        workflow_id=workflow if workflow is not None else envelope.hints.workflow_id,
        chatflow_id=chatflow if chatflow is not None else envelope.hints.chatflow_id,
        service_name=envelope.hints.service_name,
    )
    sources = {"workflowId": workflow_at, "chatflowId": chatflow_at}
    return ReadHints(hints, {k: v for k, v in sources.items() if v}, tuple(workflow_notes + chatflow_notes))
