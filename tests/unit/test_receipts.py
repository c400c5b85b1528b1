"""Receipts' pure parts: a DLQ record described into a ``dlq_index`` row, the receipt answers (and
what a restricted key may read of a dead letter), gzip negotiation, the ``dlq stats`` query built
from the CLI's filters, and the operator's receipt as text. No I/O."""

from __future__ import annotations

import datetime as dt
import gzip
import time
import uuid
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiokafka.structs import ConsumerRecord

from ingest_api.endpoints import trace_read
from ingest_api.endpoints.trace_read import (
    NOT_ALLOWED_FOR_RESTRICTED,
    LetterRow,
    accepts_gzip,
    dead_lettered,
    negotiated,
    trace_data,
)
from ingest_api.openapi import TraceAnswer
from ingest_api.responses import success
from shared.contracts import dlq
from shared.contracts.envelope import encode
from shared.devstack.pipeline import Tenant
from shared.ops.cli import trace as trace_cli
from shared.ops.cli.dlq import index_filters, stats_query
from shared.ops.cli.main import build_parser
from shared.registry import KeyInfo
from shared.runtime.dlq_reader import INDEX_COLUMNS, index_row
from shared.runtime.kafka import Record
from storage_worker import sql
from tests.router_helpers import raw_envelopes
from tests.storage_helpers import routed_envelope

T0 = dt.datetime(2026, 11, 28, 12, 0, 0, 123000, tzinfo=dt.UTC)
DLQ = "p.traces.dlq"


@pytest.fixture
def tenant() -> Tenant:
    t = Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "wf", "cf")
    t.key_ids = {"all": uuid.uuid4(), "n8n": uuid.uuid4(), "two": uuid.uuid4()}
    return t


def dlq_record(
    value: bytes | None, headers: list[tuple[str, bytes]], *, offset: int = 7, timestamp: int | None = None
) -> Record:
    return ConsumerRecord(
        topic=DLQ,
        partition=2,
        offset=offset,
        timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


# -- a DLQ record → a dlq_index row ------------------------------------------------------------


def test_a_storage_dead_letter_becomes_an_index_row_with_its_routed_platform(tenant: Tenant) -> None:
    envelope = routed_envelope(tenant, external_id="ext-1", key="two", platform=tenant.flowise)
    headers = dlq.headers(
        dlq.DeadLetter("storage_rejected", "PostgreSQL refused it"),
        stage="storage",
        topic="p.traces.routed",
        partition=1,
        offset=99,
        attempt=2,
        failed_at=T0,
    )
    row = index_row(dlq_record(encode(envelope), headers))
    assert (row.topic, row.partition, row.offset) == (DLQ, 2, 7)
    assert row.trace_id == envelope.trace_id and row.project_id == tenant.project_id
    assert row.api_key_id == tenant.key_ids["two"] and row.platform_id == tenant.flowise
    assert row.external_id == "ext-1" and row.received_at == envelope.received_at
    assert (row.reason, row.stage, row.detail) == ("storage_rejected", "storage", "PostgreSQL refused it")
    assert (row.candidates, row.origin, row.failed_at, row.attempt) == ([], "p.traces.routed/1/99", T0, 2)


def test_an_ambiguous_router_dead_letter_has_candidates_and_no_platform(tenant: Tenant) -> None:
    (envelope,) = raw_envelopes(tenant, 1)  # the router dead-letters the raw envelope as it came
    ids = (str(tenant.n8n), str(tenant.flowise))
    headers = dlq.headers(
        dlq.DeadLetter("platform_ambiguous", "could be any of them", ids),
        stage="router",
        topic="p.traces.raw",
        partition=0,
        offset=3,
        failed_at=T0,
    )
    row = index_row(dlq_record(encode(envelope), headers))
    assert row.trace_id == envelope.trace_id and row.api_key_id == tenant.key_ids["n8n"]
    assert row.platform_id is None and row.candidates == list(ids)
    assert (row.reason, row.stage, row.attempt) == ("platform_ambiguous", "router", 1)


def test_without_a_failed_at_header_the_record_time_says_when() -> None:
    row = index_row(dlq_record(b"junk", [(dlq.REASON, b"invalid_envelope")], timestamp=1_700_000_000_000))
    assert row.failed_at == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert row.trace_id is None and row.project_id is None and row.stage == "unknown"
    assert index_row(dlq_record(b"junk", [], timestamp=-1)).failed_at is None


def test_text_postgresql_cannot_store_is_cleaned() -> None:
    row = index_row(
        dlq_record(None, [(dlq.REASON, b"x"), (dlq.DETAIL, b"a\x00b"), (dlq.CANDIDATES, b"c\x00")])
    )
    assert row.detail == "a\ufffdb" and row.candidates == ["c\ufffd"]
    assert row.reason == "x" and row.attempt == 0


def test_index_row_values_follow_the_insert_statement_s_columns(tenant: Tenant) -> None:
    assert INDEX_COLUMNS == sql.INDEX_COLUMNS
    row = index_row(dlq_record(encode(routed_envelope(tenant)), []))
    assert row.values()[:3] == (DLQ, 2, 7) and len(row.values()) == len(sql.INDEX_COLUMNS)
    assert sql.INSERT_DLQ_INDEX.count("%s") == len(sql.INDEX_COLUMNS)


# -- the answers -------------------------------------------------------------------------------


def letter(**overrides: Any) -> LetterRow:
    base = LetterRow(
        trace_id=uuid.uuid4(),
        platform_id=None,
        external_id="ext",
        received_at=T0,
        reason="platform_ambiguous",
        stage="router",
        detail="key K sent workflowId=wf, which matches several platforms: a, b",
        candidates=["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"],
        failed_at=T0 + dt.timedelta(seconds=1),
        attempt=1,
        resolved_at=None,
    )
    return base._replace(**overrides)


def key(*platforms: str) -> KeyInfo:
    return KeyInfo(uuid.uuid4(), uuid.uuid4(), bool(platforms), frozenset(uuid.UUID(p) for p in platforms))


def answer(data: Any) -> dict[str, Any]:
    """The body as a client reads it, checked against the document's TraceAnswer on the way."""
    body = success(data, "m").body
    assert isinstance(body, bytes)
    msgspec.json.decode(body, type=TraceAnswer)  # raises when the answer breaks the document
    decoded: dict[str, Any] = msgspec.json.decode(body)
    return decoded


def test_a_dead_lettered_receipt_has_the_id_the_status_and_why() -> None:
    entry = letter()
    data = answer(dead_lettered(entry, key()))["data"]
    assert data == {
        "status": "dead_lettered",
        "id": str(entry.trace_id),
        "externalId": "ext",
        "platformId": None,
        "receivedAt": "2026-11-28T12:00:00.123Z",
        "deadLetter": {
            "reason": "platform_ambiguous",
            "stage": "router",
            "detail": entry.detail,
            "candidates": entry.candidates,
            "failedAt": "2026-11-28T12:00:01.123Z",
            "attempt": 1,
        },
    }


def test_a_restricted_key_reads_nothing_outside_its_scope() -> None:
    mine, theirs = letter().candidates
    data = answer(dead_lettered(letter(), key(mine)))["data"]["deadLetter"]
    assert data["candidates"] == [mine]  # the other candidate is not this key's to know
    not_allowed = letter(reason="platform_not_allowed", detail="matches flowise bot (flowise, X) outside")
    data = answer(dead_lettered(not_allowed, key(mine)))["data"]["deadLetter"]
    assert data["detail"] == NOT_ALLOWED_FOR_RESTRICTED and theirs not in data["detail"]
    # an unrestricted key (and an operator) reads it as written
    assert dead_lettered(not_allowed, key()).deadLetter.detail == not_allowed.detail
    assert dead_lettered(not_allowed, None).deadLetter.candidates == not_allowed.candidates


def test_a_stored_receipt_is_the_trace_as_before_with_its_status() -> None:
    trace_id, platform = uuid.uuid4(), uuid.uuid4()
    row = (trace_id, platform, None, "data", '{"data": 1}', None, '{"run": 3}', T0, T0, T0)
    data = answer(trace_data(row))["data"]
    assert data["status"] == "stored" and data["id"] == str(trace_id)
    assert data["payload"] == {"data": 1} and data["externalMetadata"] == {"run": 3}


def test_not_found_says_it_may_still_be_queued() -> None:
    err = trace_read.not_found(uuid.UUID(int=5))
    assert (err.status, err.code) == (404, "NOT_FOUND")
    assert "may still be queued" in err.details[0].msg and err.details[0].location == "path"


# -- gzip --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("br;q=1, gzip;q=0.1", True),
        ("x-gzip", True),
        ("*", True),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("*;q=0", False),
        ("gzip;q=0, *", False),  # named refusal wins over the wildcard
        ("gzip;q=abc", False),
        (";;,,", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


async def test_large_answers_are_compressed_small_ones_are_not() -> None:
    request = make_mocked_request("GET", "/public/traces/x", headers={"Accept-Encoding": "gzip, deflate"})
    big = negotiated(request, success({"payload": "x" * 5000}, "m"))
    assert big.headers["Vary"] == "Accept-Encoding" and big.compression
    small = negotiated(request, success({"payload": "x"}, "m"))
    assert small.headers["Vary"] == "Accept-Encoding" and not small.compression
    plain = make_mocked_request("GET", "/public/traces/x", headers={"Accept-Encoding": "identity"})
    assert not negotiated(plain, success({"payload": "x" * 5000}, "m")).compression


async def test_the_compressed_body_decodes_to_the_same_json() -> None:
    request = make_mocked_request("GET", "/public/traces/x", headers={"Accept-Encoding": "gzip"})
    response = negotiated(request, success({"payload": ["y" * 100] * 100}, "m"))
    await response._start_compression(request)  # what aiohttp does when it sends the answer
    assert response.headers["Content-Encoding"] == "gzip"
    assert msgspec.json.decode(gzip.decompress(response._compressed_body or b""))["data"] == {
        "payload": ["y" * 100] * 100
    }
    assert isinstance(response, web.Response)


# -- dlq stats from the index ------------------------------------------------------------------


def stats_args(*argv: str) -> Any:
    return build_parser().parse_args(["dlq", "stats", *argv])


def test_the_index_filters_mean_what_the_topic_filters_mean() -> None:
    project = uuid.uuid4()
    where, params = index_filters(
        stats_args("--reason", "a", "--reason", "b", "--project", str(project), "--platform", "P",
                   "--newer-than", "2h", "--older-than", "30m"),
        DLQ,
    )  # fmt: skip
    assert params["topic"] == DLQ and params["reason"] == ["a", "b"] and params["project"] == project
    assert params["newer_than"] == dt.timedelta(hours=2) and params["older_than"] == dt.timedelta(minutes=30)
    assert "%(platform)s = ANY(candidates)" in where and "project_id = %(project)s" in where
    # a project that is no id matches nothing (NULL equals nothing), as in the topic
    _, params = index_filters(stats_args("--project", "Acme", "--key-id", "nope"), DLQ)
    assert params["project"] is None and params["key_id"] is None


def test_the_stats_query_groups_by_everything_the_topic_counts_by() -> None:
    query, params = stats_query(stats_args(), DLQ)
    assert "GROUPING SETS ((reason), (k), (p), (age), (state), ())" in query
    assert params["label0"] == "< 1 h" and params["age0"] == dt.timedelta(hours=1)
    assert stats_args().from_topic is False and stats_args("--from-topic").from_topic is True


# -- the operator's receipt --------------------------------------------------------------------


def test_operator_receipts_as_text() -> None:
    platform = uuid.uuid4()
    names = trace_cli.Names([])
    names._by_id = {str(platform): "n8n prod"}
    stored = trace_cli.stored_receipt(
        (uuid.UUID(int=1), platform, "ext", "data", T0, T0, T0, None, 42), uuid.UUID(int=2), names
    )
    stored["deadLetters"] = [
        {"reason": "platform_ambiguous", "stage": "router", "failedAt": "t1", "attempt": 1,
         "resolvedAt": "t2", "dlqRecord": "d/0/1"}
    ]  # fmt: skip
    text = trace_cli.human(stored, names)
    assert f"n8n prod ({platform})" in text and "42 bytes" in text and "looked up as" in text
    assert "platform_ambiguous (stage router, attempt 1, d/0/1), resolved t2" in text

    entry = letter(candidates=[str(platform)])
    dead = trace_cli.letter_receipt(entry, names)
    assert dead["status"] == "dead_lettered" and dead["deadLetter"]["candidateNames"] == ["n8n prod"]
    text = trace_cli.human({**dead, "deadLetters": []}, names)
    assert "dead-lettered" in text and "platform_ambiguous (stage router, attempt 1)" in text
    assert f"candidates   n8n prod ({platform})" in text

    unknown = trace_cli.human(trace_cli.unknown_receipt(uuid.UUID(int=3)), names)
    assert "unknown" in unknown and "may still be queued" in unknown
