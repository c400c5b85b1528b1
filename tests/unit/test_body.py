"""Body validation: pure, no I/O."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from ingest_api.body import BodyInvalid, ParsedBody, parse_body
from shared.contracts.envelope import Hints

P1, P2 = uuid.uuid4(), uuid.uuid4()


def ok(body: object) -> ParsedBody:
    return parse_body(msgspec.json.encode(body))


def bad(raw: bytes | object) -> BodyInvalid:
    data = raw if isinstance(raw, bytes) else msgspec.json.encode(raw)
    with pytest.raises(BodyInvalid) as info:
        parse_body(data)
    return info.value


def test_seed_legacy_body() -> None:
    parsed = ok({"data": {"input": "...", "output": "..."}})
    assert parsed.shape == "data" and parsed.platform_id is None and parsed.hints == Hints()


def test_canonical_body_with_hints_and_platform() -> None:
    parsed = ok(
        {
            "spans": [
                {
                    "span_id": "a",
                    "name": "root",
                    "start_time_unix_nano": "1700000000000000000",
                    "status": {"code": 1},
                },
                {"span_id": "b", "name": "llm", "parent_span_id": "a", "end_time_unix_nano": 17},
            ],
            "metadata": {"workflowId": "wf-1", "chatflowId": 42, "mibo": {"platform_id": str(P1)}},
            "platformId": str(P1),
        }
    )
    assert parsed.shape == "spans"
    assert parsed.platform_id == P1
    assert parsed.hints == Hints(workflow_id="wf-1", chatflow_id="42")


def test_nested_platform_id_alone() -> None:
    assert ok({"data": 1, "metadata": {"mibo": {"platform_id": str(P2)}}}).platform_id == P2


def test_data_may_be_any_value_but_null() -> None:
    value: object
    for value in ("text", 0, False, [], {}):
        assert ok({"data": value}).shape == "data"
    assert bad({"data": None}).details[0].path == "data"


@pytest.mark.parametrize(
    ("body", "path", "type_"),
    [
        (b"{not json", "", "json_invalid"),
        (b"", "", "json_invalid"),
        ([1, 2], "", "type_error"),
        ({}, "spans", "missing"),
        ({"spans": [], "data": 1}, "spans", "value_error"),
        ({"spans": "x"}, "spans", "type_error"),
        ({"spans": [{"span_id": "a", "name": "x"}], "data": 1}, "spans", "conflict"),
        ({"spans": []}, "spans", "value_error"),
        ({"spans": [{"name": "x"}]}, "spans[0].span_id", "missing"),  # the missing field itself
        ({"spans": [{"span_id": 1, "name": "x"}]}, "spans[0].span_id", "type_error"),
        (
            {"spans": [{"span_id": "a", "name": "x", "start_time_unix_nano": "12.5"}]},
            "spans[0].start_time_unix_nano",
            "value_error",
        ),
        (
            {"spans": [{"span_id": "a", "name": "x", "status": {"code": 7}}]},
            "spans[0].status.code",
            "value_error",
        ),
        (
            {"spans": [{"span_id": "a", "name": "x"}, {"span_id": "a", "name": "y"}]},
            "spans[1].span_id",
            "duplicate",
        ),
        ({"data": 1, "platformId": "nope"}, "platformId", "uuid_parsing"),
        (
            {"data": 1, "metadata": {"mibo": {"platform_id": "x"}}},
            "metadata.mibo.platform_id",
            "uuid_parsing",
        ),
        (
            {"data": 1, "platformId": str(P1), "metadata": {"mibo": {"platform_id": str(P2)}}},
            "platformId",
            "platform_conflict",
        ),
        ({"data": 1, "metadata": "x"}, "metadata", "type_error"),
        ({"data": 1, "metadata": {"workflowId": {"a": 1}}}, "metadata.workflowId", "string_type"),
    ],
)
def test_invalid_bodies_say_where(body: object, path: str, type_: str) -> None:
    err = bad(body)
    assert err.details, err.message
    assert err.details[0].path == path, err.details
    assert err.details[0].type == type_, err.details
    assert err.details[0].msg
