"""Which platform a trace belongs to: one pure function of (envelope, snapshot) — SPEC §5.

1. Candidates: the key's scope when it is restricted (platforms that still exist), else every
   platform of the key's project.
2. An explicit platform (``platformId`` / ``metadata.mibo.platform_id``) must be in the project
   (else ``platform_not_found``) and among the candidates (else ``platform_not_allowed``).
3. Otherwise hints narrow the candidates (read in every spelling clients send, see
   ``router_worker.hints``): ``chatflowId`` → Flowise platforms with that chatflow
   id, ``workflowId`` → n8n platforms with that workflow id, an OTLP resource's ``service.name`` →
   platforms (of any type) whose ``otlp_service_name`` it is; all hints present must match.
   - A hint that matches only platforms outside the key's scope → ``platform_not_allowed``.
   - Hints that each match something but no platform matches them all → ``platform_unresolved``.
   - Hints that match no platform of the project at all cannot narrow anything (the platform has
     no routing id configured yet): the candidates stay as they were. This keeps the seed's promise
     that a key restricted to one platform routes automatically even when its n8n traces carry a
     workflowId nobody configured, and makes such traces ambiguous — fixable by configuring the
     id and replaying — when there are several candidates.
4. Exactly one candidate → routed; none → ``platform_unresolved``; several → ``platform_ambiguous``
   with the candidates listed.
"""

from __future__ import annotations

import uuid

import msgspec

from router_worker.hints import ReadHints, read_hints
from router_worker.platforms import PlatformInfo, Snapshot
from shared.contracts.dlq import DeadLetter
from shared.contracts.envelope import Hints, RawEnvelope, ResolvedBy


class Routed(msgspec.Struct, frozen=True):
    platform_id: uuid.UUID
    resolved_by: ResolvedBy


Decision = Routed | DeadLetter


def _describe(platforms: tuple[PlatformInfo, ...] | list[PlatformInfo]) -> str:
    return ", ".join(f"{p.name} ({p.type}, {p.id})" for p in platforms) or "none"


def _hint_text(read: ReadHints) -> str:
    """``workflowId=wf-1 (metadata.workflow_id)``: each hint with where it was read, then any
    spelling that disagreed."""
    hints, parts = read.hints, []
    for label, value in (
        ("workflowId", hints.workflow_id),
        ("chatflowId", hints.chatflow_id),
        ("service.name", hints.service_name),
    ):
        if value is not None:
            where = read.sources.get(label)
            parts.append(f"{label}={value}" + (f" ({where})" if where else ""))
    text = " and ".join(parts)
    if read.disagreements:
        text += " [" + "; ".join(read.disagreements) + "]"
    return text


def _workflow_match(platform: PlatformInfo, hints: Hints) -> bool:
    return (
        hints.workflow_id is not None and platform.type == "n8n" and platform.workflow_id == hints.workflow_id
    )


def _chatflow_match(platform: PlatformInfo, hints: Hints) -> bool:
    return (
        hints.chatflow_id is not None
        and platform.type == "flowise"
        and platform.chatflow_id == hints.chatflow_id
    )


def _service_match(platform: PlatformInfo, hints: Hints) -> bool:
    """Any platform type: OpenTelemetry can instrument anything."""
    return hints.service_name is not None and platform.otlp_service_name == hints.service_name


def _matches(platform: PlatformInfo, hints: Hints) -> bool:
    """True when ``platform`` matches every hint present."""
    return (
        (hints.workflow_id is None or _workflow_match(platform, hints))
        and (hints.chatflow_id is None or _chatflow_match(platform, hints))
        and (hints.service_name is None or _service_match(platform, hints))
    )


def _matches_any(platform: PlatformInfo, hints: Hints) -> bool:
    return (
        _workflow_match(platform, hints)
        or _chatflow_match(platform, hints)
        or _service_match(platform, hints)
    )


class _Scope(msgspec.Struct, frozen=True):
    """The platforms a trace may go to (step 1), and how to name its sender in a detail."""

    project: tuple[PlatformInfo, ...]
    candidates: tuple[PlatformInfo, ...]
    who: str


def _scope(envelope: RawEnvelope, snapshot: Snapshot) -> _Scope:
    project = snapshot.project(envelope.project_id)
    key = f"key {envelope.key_id}"
    if envelope.key_restricted:
        allowed = set(envelope.key_scope)
        who = f"{key} (restricted to {len(envelope.key_scope)} platform(s))"
        return _Scope(project, tuple(p for p in project if p.id in allowed), who)
    return _Scope(project, project, f"{key} (all platforms of project {envelope.project_id})")


def _by_explicit_platform(envelope: RawEnvelope, scope: _Scope) -> Decision | None:
    """Step 2: an explicit platform decides alone; ``None`` when the body names none."""
    explicit = envelope.platform_id
    if explicit is None:
        return None
    if all(p.id != explicit for p in scope.project):
        return DeadLetter(
            "platform_not_found",
            f"{scope.who} named platform {explicit}, which is not a platform of project {envelope.project_id}",
        )
    if all(p.id != explicit for p in scope.candidates):
        return DeadLetter(
            "platform_not_allowed",
            f"{scope.who} named platform {explicit}, which is outside the key's scope; "
            f"allowed: {_describe(scope.candidates)}",
        )
    return Routed(explicit, "explicit")


def _hinted(hints: Hints) -> bool:
    return hints.workflow_id is not None or hints.chatflow_id is not None or hints.service_name is not None


def _by_hints(read: ReadHints, scope: _Scope) -> Decision | None:
    """Step 3: hints narrow the candidates to one, or explain why they cannot; ``None`` when there
    are no hints, or when they match no platform of the project (nothing configured to narrow by)."""
    hints = read.hints
    if not _hinted(hints):
        return None
    text = _hint_text(read)
    matching = [p for p in scope.candidates if _matches(p, hints)]
    if len(matching) == 1:
        return Routed(matching[0].id, "hint")
    if len(matching) > 1:
        return DeadLetter(
            "platform_ambiguous",
            f"{scope.who} sent {text}, which matches several platforms: {_describe(matching)}",
            tuple(str(p.id) for p in matching),
        )
    outside = [p for p in scope.project if _matches(p, hints)]
    if outside:
        return DeadLetter(
            "platform_not_allowed",
            f"{scope.who} sent {text}, which matches {_describe(outside)} outside the key's scope",
            tuple(str(p.id) for p in outside),
        )
    if any(_matches_any(p, hints) for p in scope.project):
        return DeadLetter(
            "platform_unresolved",
            f"{scope.who} sent {text}: the hints point to different platforms and no platform matches them all",
        )
    return None


def _by_count(envelope: RawEnvelope, read: ReadHints, scope: _Scope) -> Decision:
    """Step 4: exactly one candidate routes; none or several cannot."""
    candidates = scope.candidates
    if len(candidates) == 1:
        return Routed(candidates[0].id, "single_candidate")
    because = f" ({_hint_text(read)} matches no platform of the project)" if _hinted(read.hints) else ""
    if not candidates:
        why = (
            "none of the key's platforms exists any more"
            if envelope.key_restricted
            else f"project {envelope.project_id} has no platforms"
        )
        return DeadLetter("platform_unresolved", f"{scope.who} has no platform to route to{because}: {why}")
    return DeadLetter(
        "platform_ambiguous",
        f"{scope.who} sent no platformId and no matching workflowId/chatflowId/service.name{because}; "
        f"it could be any of: {_describe(candidates)}",
        tuple(str(p.id) for p in candidates),
    )


def resolve(envelope: RawEnvelope, snapshot: Snapshot) -> Decision:
    """SPEC §5, in order: the key's scope, then an explicit platform, then hints, then the count."""
    scope = _scope(envelope, snapshot)
    explicit = _by_explicit_platform(envelope, scope)
    if explicit is not None:
        return explicit
    read = read_hints(envelope)
    return _by_hints(read, scope) or _by_count(envelope, read, scope)
