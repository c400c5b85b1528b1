"""The 202 of ``POST /public/traces`` is written from prepared bytes: it must be exactly the JSON
that ``success()`` would write (Mibo's envelope), for every kind of external id and platform."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from ingest_api.endpoints.traces import accepted
from ingest_api.responses import success
from shared.contracts.ids import uuid7
from shared.contracts.times import iso_utc


def test_prepared_answer_is_the_envelope_success_writes() -> None:
    received = dt.datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=dt.UTC)
    for external_id in (None, "order-1", 'quote " and \\ backslash', "x" * 255):
        for platform in (None, uuid.uuid4()):
            trace_id = str(uuid7())
            response = accepted(trace_id, external_id, platform, received)
            expected = success(
                {
                    "id": trace_id,
                    "externalId": external_id,
                    "platformId": str(platform) if platform else None,
                    "status": "queued",
                    "createdAt": iso_utc(received),
                },
                "Trace accepted",
                status=202,
            )
            assert response.status == 202
            assert response.content_type == "application/json"
            assert isinstance(response.body, bytes) and isinstance(expected.body, bytes)
            got, want = msgspec.json.decode(response.body), msgspec.json.decode(expected.body)
            assert got["timestamp"] == iso_utc(received)  # the instant it was received
            want["timestamp"] = got["timestamp"]
            assert got == want
            assert list(got) == list(want) and list(got["data"]) == list(want["data"])
