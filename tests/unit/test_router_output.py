"""The router's spliced routed values decode exactly as the envelope ``routed()`` builds."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from router_worker import output
from shared.contracts.envelope import Hints, RawEnvelope, decode_raw, decode_routed, encode, routed


def _raw(body: bytes = b'{"data": {"input": "x"}, "metadata": {"workflowId": "wf"}}') -> RawEnvelope:
    return RawEnvelope(
        trace_id=uuid.uuid4(),
        received_at=dt.datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=dt.UTC),
        project_id=uuid.uuid4(),
        key_id=uuid.uuid4(),
        key_restricted=True,
        key_scope=[uuid.uuid4()],
        external_id="ext-1",
        shape="data",
        platform_id=None,
        hints=Hints(workflow_id="wf"),
        body=msgspec.Raw(body),
    )


def _value(raw: RawEnvelope, platform: uuid.UUID, at: dt.datetime, value: bytes | None = None) -> bytes:
    value = encode(raw) if value is None else value
    suffix = output.routed_suffix(platform, "hint", output.routed_at_json(at))
    return output.routed_value(value, decode_raw(value), platform, "hint", at, suffix)


def test_a_spliced_value_decodes_as_the_routed_envelope() -> None:
    raw, platform = _raw(), uuid.uuid4()
    at = dt.datetime(2026, 11, 28, 12, 0, 1, 5, tzinfo=dt.UTC)
    value = _value(raw, platform, at)
    expected = msgspec.structs.replace(routed(raw, platform, "hint"), routed_at=at)
    assert decode_routed(value) == expected
    assert value.startswith(encode(raw)[:-1])  # the raw bytes, untouched: no re-encoding


def test_trailing_whitespace_after_the_object_is_dropped() -> None:
    raw, platform = _raw(), uuid.uuid4()
    at = dt.datetime(2026, 11, 28, 12, 0, 1, tzinfo=dt.UTC)
    value = _value(raw, platform, at, encode(raw) + b" \n")
    assert decode_routed(value).routed_platform_id == platform
    assert value.endswith(b"}")


def test_a_value_that_already_names_a_routed_field_is_encoded_whole() -> None:
    """A routed envelope replayed into traces.raw: splicing would give an object a name twice."""
    raw, first, second = _raw(), uuid.uuid4(), uuid.uuid4()
    already = encode(routed(raw, first, "explicit"))
    assert not output.spliceable(already)
    at = dt.datetime(2026, 11, 28, 12, 0, 2, tzinfo=dt.UTC)
    value = _value(raw, second, at, already)
    decoded = decode_routed(value)
    assert (decoded.routed_platform_id, decoded.resolved_by, decoded.routed_at) == (second, "hint", at)
    assert value.count(b'"routed_platform_id"') == 1


def test_a_body_mentioning_a_routed_name_takes_the_whole_encoding_too() -> None:
    raw, platform = (
        _raw(b'{"data": {"input": "\\"resolved_by\\""}, "note": {"resolved_by": 1}}'),
        uuid.uuid4(),
    )
    assert not output.spliceable(encode(raw))
    at = dt.datetime(2026, 11, 28, 12, 0, 3, tzinfo=dt.UTC)
    decoded = decode_routed(_value(raw, platform, at))
    assert decoded.routed_platform_id == platform and bytes(decoded.body) == bytes(raw.body)
