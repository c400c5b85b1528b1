"""Dead-letter records (SPEC §4): the original key and value, explained by headers.

Headers are plain UTF-8 strings so standard tools read them (``kcat -C -t traces.dlq -f
'%h\\n'``). A record can be dead-lettered by the router (``dlq-stage=router``) or by the storage
worker (``dlq-stage=storage``); ``dlq-attempt`` counts replays (1 for the first dead-lettering).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from shared.contracts.times import iso_utc

Reason = Literal[
    "invalid_envelope",
    "platform_not_found",
    "platform_not_allowed",
    "platform_unresolved",
    "platform_ambiguous",
    "storage_rejected",
]
Stage = Literal["router", "storage"]

REASON = "dlq-reason"
DETAIL = "dlq-detail"
STAGE = "dlq-stage"
CANDIDATES = "dlq-candidates"
SOURCE = "dlq-source"
FAILED_AT = "dlq-failed-at"
ATTEMPT = "dlq-attempt"
HEADER_NAMES = (REASON, DETAIL, STAGE, CANDIDATES, SOURCE, FAILED_AT, ATTEMPT)

MAX_DETAIL = 2000


class DeadLetter(msgspec.Struct, frozen=True):
    """Why a record cannot go on: a reason code, a sentence for operators, candidates if any."""

    reason: Reason
    detail: str
    candidates: tuple[str, ...] = ()


def headers(
    dead: DeadLetter,
    *,
    stage: Stage,
    topic: str,
    partition: int,
    offset: int,
    attempt: int = 1,
    failed_at: dt.datetime | None = None,
) -> list[tuple[str, bytes]]:
    when = iso_utc(failed_at or dt.datetime.now(dt.UTC))
    out = [
        (REASON, dead.reason),
        (DETAIL, dead.detail[:MAX_DETAIL]),
        (STAGE, stage),
        (SOURCE, f"{topic}/{partition}/{offset}"),
        (FAILED_AT, when),
        (ATTEMPT, str(attempt)),
    ]
    if dead.candidates:
        out.insert(3, (CANDIDATES, ",".join(dead.candidates)))
    return [(name, value.encode()) for name, value in out]


class Letter(msgspec.Struct, frozen=True):
    """A dead-letter record ready to produce: the original key and value, explained by headers."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: Reason

    @property
    def detail(self) -> str:
        return dict(self.headers)[DETAIL].decode()


def letter(
    dead: DeadLetter,
    *,
    stage: Stage,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    source_headers: Sequence[tuple[str, bytes]] | None = None,
) -> Letter:
    """The dead letter of one consumed record, by the router or the storage worker: its original
    key and value, the ``dlq-*`` headers, and its attempt (kept across replays)."""
    attempt = max(1, attempt_of(source_headers))
    out = headers(dead, stage=stage, topic=topic, partition=partition, offset=offset, attempt=attempt)
    return Letter(key, value, out, dead.reason)


def read_headers(raw: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """Headers of a record as a dict of strings (undecodable bytes replaced)."""
    return {name: value.decode("utf-8", "replace") for name, value in (raw or ()) if value is not None}


def attempt_of(raw: Sequence[tuple[str, bytes]] | None) -> int:
    """The ``dlq-attempt`` a record carries (0 when it was never dead-lettered)."""
    try:
        return int(read_headers(raw).get(ATTEMPT, "0"))
    except ValueError:
        return 0
