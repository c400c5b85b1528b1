"""The routing table (SPEC §5) as unit tests of the pure resolver: no I/O."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
import pytest

from router_worker.platforms import PlatformInfo, Snapshot
from router_worker.resolve import Routed, resolve
from shared.contracts.dlq import DeadLetter
from shared.contracts.envelope import Hints, RawEnvelope

PROJECT, OTHER = uuid.uuid4(), uuid.uuid4()
N8N = PlatformInfo(uuid.uuid4(), PROJECT, "n8n prod", "n8n", workflow_id="wf-1")
N8N_2 = PlatformInfo(uuid.uuid4(), PROJECT, "n8n staging", "n8n", workflow_id="wf-2")
FLOWISE = PlatformInfo(uuid.uuid4(), PROJECT, "bot", "flowise", chatflow_id="cf-1")
HTTP = PlatformInfo(uuid.uuid4(), PROJECT, "api", "http_api")
FOREIGN = PlatformInfo(uuid.uuid4(), OTHER, "elsewhere", "n8n", workflow_id="wf-1")
ALL = Snapshot.of([N8N, N8N_2, FLOWISE, HTTP, FOREIGN])


def env(
    *,
    scope: list[PlatformInfo] | None = None,
    platform: uuid.UUID | None = None,
    workflow: str | None = None,
    chatflow: str | None = None,
    service: str | None = None,
    project: uuid.UUID = PROJECT,
) -> RawEnvelope:
    return RawEnvelope(
        trace_id=uuid.uuid4(),
        received_at=dt.datetime.now(dt.UTC),
        project_id=project,
        key_id=uuid.uuid4(),
        key_restricted=scope is not None,
        key_scope=[p.id for p in scope or []],
        external_id=None,
        shape="data",
        platform_id=platform,
        hints=Hints(workflow_id=workflow, chatflow_id=chatflow, service_name=service),
        body=msgspec.Raw(b"{}"),
    )


def dead(decision: object, reason: str) -> DeadLetter:
    assert isinstance(decision, DeadLetter), decision
    assert decision.reason == reason, decision
    assert decision.detail
    return decision


def test_key_restricted_to_one_platform_routes_without_hints() -> None:
    assert resolve(env(scope=[HTTP]), ALL) == Routed(HTTP.id, "single_candidate")


def test_restricted_to_one_with_an_unconfigured_workflow_id_still_routes() -> None:
    assert resolve(env(scope=[HTTP], workflow="wf-unknown"), ALL) == Routed(HTTP.id, "single_candidate")


def test_restricted_to_two_with_a_matching_workflow_id() -> None:
    assert resolve(env(scope=[N8N, FLOWISE], workflow="wf-1"), ALL) == Routed(N8N.id, "hint")
    assert resolve(env(scope=[N8N, FLOWISE], chatflow="cf-1"), ALL) == Routed(FLOWISE.id, "hint")


def test_restricted_to_two_without_hints_is_ambiguous_with_candidates() -> None:
    decision = dead(resolve(env(scope=[N8N, FLOWISE]), ALL), "platform_ambiguous")
    assert set(decision.candidates) == {str(N8N.id), str(FLOWISE.id)}
    assert "n8n prod" in decision.detail and "bot" in decision.detail


def test_unrestricted_with_neither_hint_nor_platform() -> None:
    dead(resolve(env(), ALL), "platform_ambiguous")
    only_one = Snapshot.of([HTTP])
    assert resolve(env(), only_one) == Routed(HTTP.id, "single_candidate")
    dead(resolve(env(), Snapshot.of([])), "platform_unresolved")


def test_unrestricted_with_a_hint() -> None:
    assert resolve(env(workflow="wf-2"), ALL) == Routed(N8N_2.id, "hint")


def test_unknown_hint_with_several_candidates_is_ambiguous_and_says_so() -> None:
    decision = dead(resolve(env(workflow="wf-9"), ALL), "platform_ambiguous")
    assert "wf-9 matches no platform" in decision.detail


def test_hint_matching_a_platform_outside_the_scope_is_not_allowed() -> None:
    decision = dead(resolve(env(scope=[HTTP, FLOWISE], workflow="wf-1"), ALL), "platform_not_allowed")
    assert decision.candidates == (str(N8N.id),)


def test_conflicting_hints_are_unresolved() -> None:
    dead(resolve(env(workflow="wf-1", chatflow="cf-1"), ALL), "platform_unresolved")


def test_hint_of_the_wrong_type_does_not_match() -> None:
    # chatflowId "wf-1" names no Flowise platform, even though an n8n platform has that id
    dead(resolve(env(chatflow="wf-1"), ALL), "platform_ambiguous")


@pytest.mark.parametrize("scope", [None, [N8N, HTTP]])
def test_explicit_platform_routes(scope: list[PlatformInfo] | None) -> None:
    assert resolve(env(scope=scope, platform=N8N.id, chatflow="cf-1"), ALL) == Routed(N8N.id, "explicit")


def test_explicit_platform_not_in_project() -> None:
    dead(resolve(env(platform=FOREIGN.id), ALL), "platform_not_found")
    dead(resolve(env(platform=uuid.uuid4()), ALL), "platform_not_found")


def test_explicit_platform_outside_scope() -> None:
    dead(resolve(env(scope=[HTTP], platform=N8N.id), ALL), "platform_not_allowed")


def test_platform_deleted_after_ingest() -> None:
    after_delete = Snapshot.of([N8N_2, FLOWISE, HTTP])
    dead(resolve(env(platform=N8N.id), after_delete), "platform_not_found")
    # a key restricted to the deleted platform only has nothing left
    decision = dead(resolve(env(scope=[N8N]), after_delete), "platform_unresolved")
    assert "none of the key's platforms exists" in decision.detail


def test_other_projects_platforms_are_never_candidates() -> None:
    assert resolve(env(project=OTHER), ALL) == Routed(FOREIGN.id, "single_candidate")
    assert resolve(env(project=OTHER, workflow="wf-1"), ALL) == Routed(FOREIGN.id, "hint")


# -- OTLP: the resource's service.name matches a platform's otlp_service_name (any type) ----------

CHECKOUT = PlatformInfo(uuid.uuid4(), PROJECT, "checkout", "http_api", otlp_service_name="checkout")
FLOWS = PlatformInfo(uuid.uuid4(), PROJECT, "flows", "n8n", workflow_id="wf-3", otlp_service_name="flows")
OTEL = Snapshot.of([N8N, FLOWISE, HTTP, CHECKOUT, FLOWS, FOREIGN])


def test_service_name_routes_to_the_platform_with_that_otlp_service_name() -> None:
    assert resolve(env(service="checkout"), OTEL) == Routed(CHECKOUT.id, "hint")
    assert resolve(env(service="flows"), OTEL) == Routed(FLOWS.id, "hint")  # any platform type
    assert resolve(env(scope=[N8N, CHECKOUT], service="checkout"), OTEL) == Routed(CHECKOUT.id, "hint")


def test_unknown_service_name_cannot_narrow() -> None:
    decision = dead(resolve(env(service="unknown_service"), OTEL), "platform_ambiguous")
    assert "service.name=unknown_service matches no platform" in decision.detail
    assert resolve(env(scope=[HTTP], service="unknown_service"), OTEL) == Routed(HTTP.id, "single_candidate")


def test_service_name_of_a_platform_outside_the_scope_is_not_allowed() -> None:
    decision = dead(resolve(env(scope=[N8N, HTTP], service="checkout"), OTEL), "platform_not_allowed")
    assert decision.candidates == (str(CHECKOUT.id),)


def test_service_name_and_other_hints_must_all_match() -> None:
    assert resolve(env(service="flows", workflow="wf-3"), OTEL) == Routed(FLOWS.id, "hint")
    dead(resolve(env(service="checkout", workflow="wf-3"), OTEL), "platform_unresolved")


def test_explicit_platform_wins_over_service_name() -> None:
    assert resolve(env(platform=HTTP.id, service="checkout"), OTEL) == Routed(HTTP.id, "explicit")


def test_service_names_of_other_projects_do_not_match() -> None:
    foreign = PlatformInfo(uuid.uuid4(), OTHER, "svc", "custom", otlp_service_name="checkout")
    snapshot = Snapshot.of([N8N, HTTP, foreign])
    dead(resolve(env(service="checkout"), snapshot), "platform_ambiguous")
