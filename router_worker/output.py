"""The router's outputs as bytes (pure): a routed value spliced from the raw one, and where it goes.

A ``traces.routed`` value is the raw envelope plus three fields (``RoutedEnvelope``). Decoding the
raw envelope and encoding all of it again costs more than everything else the router decides, so
the router appends the three fields to the raw value's bytes instead: JSON objects are unordered,
and ``decode_routed`` of the result equals the envelope ``routed()`` would build
(tests/unit/test_router_output.py). The splice is used only when it is safe:

- the value ends with ``}`` (after trailing whitespace) — any object the raw decoder accepted does;
- the value does not already hold one of the three names anywhere (a routed envelope replayed into
  ``traces.raw`` from a storage dead letter, or a body that happens to contain the text): then the
  envelope is decoded and encoded whole, as before, so no object ever carries a name twice.

The routed record goes to the partition its raw record came from when both topics have as many
partitions: the raw record was placed by its key with the producers' partitioner, so the key lands
where that partitioner would put it in ``traces.routed`` too — with no hash computed here.
"""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from shared.contracts.envelope import RawEnvelope, ResolvedBy, encode, routed

_ROUTED_NAMES = (b'"routed_', b'"resolved_by"')  # "routed_platform_id", "routed_at"; one scan each
_encoder = msgspec.json.Encoder()


def routed_at_json(at: dt.datetime) -> bytes:
    """An instant as the envelope encodes it (RFC 3339, as msgspec writes datetimes)."""
    return _encoder.encode(at)


def routed_suffix(platform_id: uuid.UUID, resolved_by: ResolvedBy, routed_at: bytes) -> bytes:
    """The bytes that close a raw envelope into a routed one: ``,"routed_platform_id":…}``."""
    return (
        b',"routed_platform_id":"' + str(platform_id).encode() + b'","resolved_by":"'
        + resolved_by.encode() + b'","routed_at":' + routed_at + b"}"
    )  # fmt: skip


def spliceable(value: bytes) -> bool:
    """True when ``value`` can take the routed fields by appending them (see the module doc)."""
    end = value.rstrip()
    return end.endswith(b"}") and not any(name in value for name in _ROUTED_NAMES)


def splice(value: bytes, suffix: bytes) -> bytes:
    """``value`` (``spliceable``) with its closing brace replaced by ``suffix``."""
    end = value.rstrip()
    return end[:-1] + suffix


def routed_value(
    value: bytes, envelope: RawEnvelope, platform_id: uuid.UUID, resolved_by: ResolvedBy, at: dt.datetime,
    suffix: bytes,
) -> bytes:  # fmt: skip
    """The routed value: spliced when safe, else the whole envelope encoded with its decision."""
    if spliceable(value):
        return splice(value, suffix)
    return encode(msgspec.structs.replace(routed(envelope, platform_id, resolved_by), routed_at=at))
