"""Routing hints in every spelling real clients send (issue 14): the n8n node's auto-detect and
legacy bodies, Flowise's, with their precedence — pure, no I/O."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from router_worker.hints import read_hints
from router_worker.platforms import PlatformInfo, Snapshot
from router_worker.resolve import Routed, resolve
from shared.contracts.dlq import DeadLetter
from shared.contracts.envelope import Hints, RawEnvelope

PROJECT = uuid.uuid4()
PROD = PlatformInfo(uuid.uuid4(), PROJECT, "n8n prod", "n8n", workflow_id="wf-1")
STAGING = PlatformInfo(uuid.uuid4(), PROJECT, "n8n staging", "n8n")
BOT = PlatformInfo(uuid.uuid4(), PROJECT, "bot", "flowise", chatflow_id="cf-1")
SNAPSHOT = Snapshot.of([PROD, STAGING, BOT])


def envelope(body: dict, hints: Hints | None = None) -> RawEnvelope:
    return RawEnvelope(
        trace_id=uuid.uuid4(),
        received_at=dt.datetime.now(dt.UTC),
        project_id=PROJECT,
        key_id=uuid.uuid4(),
        key_restricted=False,
        key_scope=[],
        external_id=None,
        shape="data",
        platform_id=None,
        hints=hints or Hints(),
        body=msgspec.Raw(msgspec.json.encode(body)),
    )


AUTO_DETECT = {  # the n8n node's auto-detect ("optimized") body, as its source builds it
    "status": "success",
    "data": {"A": {"output": {}, "type": "t", "status": "success"}},
    "metadata": {"workflow_id": "wf-1"},
}
LEGACY = {  # its legacy body: workflowId in metadata and in externalMetadata
    "data": {"input": "...", "output": "..."},
    "metadata": {"workflowId": "wf-1", "executionId": "42"},
    "externalMetadata": {"workflowId": "wf-1", "workflowName": "orders"},
}


def test_auto_detect_body_routes_by_snake_case_workflow_id() -> None:
    read = read_hints(envelope(AUTO_DETECT))
    assert read.hints.workflow_id == "wf-1" and read.sources == {"workflowId": "metadata.workflow_id"}
    assert resolve(envelope(AUTO_DETECT), SNAPSHOT) == Routed(PROD.id, "hint")


def test_legacy_body_and_external_metadata_alone() -> None:
    assert resolve(envelope(LEGACY), SNAPSHOT) == Routed(PROD.id, "hint")
    only_external = {"data": 1, "externalMetadata": {"workflow_id": "wf-1"}}
    read = read_hints(envelope(only_external))
    assert read.sources == {"workflowId": "externalMetadata.workflow_id"}
    assert resolve(envelope(only_external), SNAPSHOT) == Routed(PROD.id, "hint")


def test_flowise_spellings() -> None:
    for spelling in ("chatflowId", "chatflowid", "chatflow_id"):
        env = envelope({"data": 1, "metadata": {spelling: "cf-1"}})
        assert resolve(env, SNAPSHOT) == Routed(BOT.id, "hint"), spelling


def test_precedence_and_disagreement_are_explained() -> None:
    body = {
        "data": 1,
        "metadata": {"workflowId": "wf-9", "workflow_id": "wf-1"},
        "externalMetadata": {"workflowId": "wf-1"},
    }
    read = read_hints(envelope(body))
    assert read.hints.workflow_id == "wf-9" and read.sources["workflowId"] == "metadata.workflowId"
    assert len(read.disagreements) == 2
    decision = resolve(envelope(body), SNAPSHOT)
    assert isinstance(decision, DeadLetter) and decision.reason == "platform_ambiguous"
    assert "workflowId=wf-9 (metadata.workflowId)" in decision.detail
    assert "metadata.workflow_id 'wf-1' disagrees" in decision.detail


def test_non_string_values_and_undecodable_bodies_are_no_hints() -> None:
    assert read_hints(envelope({"data": 1, "metadata": {"workflow_id": True}})).hints == Hints()
    assert read_hints(envelope({"data": 1, "metadata": ["x"]})).hints == Hints()
    assert read_hints(envelope({"data": 1, "metadata": {"workflow_id": 7}})).hints.workflow_id == "7"
    broken = msgspec.structs.replace(envelope({}), body=msgspec.Raw(b"{not json"))
    assert read_hints(broken).hints == Hints()


def test_the_envelope_hints_still_count_when_the_body_has_none() -> None:
    """Envelopes written by an ingest API that extracted the hint itself route the same."""
    env = envelope({"data": 1}, Hints(workflow_id="wf-1"))
    assert resolve(env, SNAPSHOT) == Routed(PROD.id, "hint")
