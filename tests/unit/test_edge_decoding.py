"""Bad input at the decoding steps, as pure functions (no I/O): invalid UTF-8 anywhere in a JSON
body, nesting past the documented limits (JSON and OTLP values, both encodings), batches, and the
admin request structs. Each is a precise refusal, never a RecursionError or UnicodeDecodeError."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest_api.body import (
    MAX_JSON_DEPTH,
    BodyInvalid,
    check_json,
    json_depth_exceeds,
    parse_body,
    utf8_error_offset,
)
from ingest_api.endpoints import admin
from ingest_api.endpoints.batch import BATCH_NESTING, _decode_batch, _external_id
from ingest_api.otlp_decode import MAX_VALUE_DEPTH, DecodedExport, OtlpInvalid, decode_json, decode_protobuf
from ingest_api.responses import ApiError, detail_from_msgspec

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def nested(depth: int) -> bytes:
    """A JSON array nested ``depth`` levels deep."""
    return b"[" * depth + b"]" * depth


def refused(raw: bytes) -> BodyInvalid:
    with pytest.raises(BodyInvalid) as info:
        parse_body(raw)
    return info.value


# --------------------------------------------------------------------------------------------------
# UTF-8


@pytest.mark.parametrize(
    ("raw", "offset"),
    [
        (b'{"data": "ok"}', None),
        ('{"data": "héllo ✓ 🎉"}'.encode(), None),
        (b'{"data": "\xff"}', 10),
        (b'{"data": "\xc3"}', 10),  # truncated sequence
        (b'{"data": "\xed\xa0\x80"}', 10),  # an encoded surrogate is not UTF-8
        (b'{"data": 1, "x": "\xc0\xaf"}', 18),  # overlong
    ],
)
def test_utf8_offsets(raw: bytes, offset: int | None) -> None:
    assert utf8_error_offset(raw) == offset


def test_utf8_is_checked_across_piece_boundaries() -> None:
    euro = "€".encode()  # three bytes
    for pad in range(65530, 65538):  # the character straddles the 64 KiB boundary
        raw = b"x" * pad + euro + b"x" * 10
        assert utf8_error_offset(raw) is None, pad
        broken = b"x" * pad + euro[:2] + b"x" * 10
        assert utf8_error_offset(broken) == pad, pad


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": "\xff"}',  # in a string msgspec decodes (was a UnicodeDecodeError: a 500)
        b'{"data": {"input": "\xc3("}}',
        b'{"data": 1, "comment": "\xff\xfe"}',  # in a field msgspec skips (was accepted, then dead-lettered)
        b'{"data": 1, "\xff": 2}',  # in a key
        b'{"spans": [{"span_id": "a", "name": "\xe2\x82"}]}',
    ],
)
def test_invalid_utf8_anywhere_is_a_400(raw: bytes) -> None:
    err = refused(raw)
    assert err.message == "Body is not valid UTF-8"
    assert err.details[0].type == "utf8_invalid" and "offset" in err.details[0].msg


# --------------------------------------------------------------------------------------------------
# JSON nesting


def test_depth_limit_is_exact() -> None:
    assert not json_depth_exceeds(nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH)
    assert json_depth_exceeds(nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    objects = b'{"a":' * MAX_JSON_DEPTH + b"1" + b"}" * MAX_JSON_DEPTH
    assert not json_depth_exceeds(objects, MAX_JSON_DEPTH)
    assert json_depth_exceeds(b"[" + objects + b"]", MAX_JSON_DEPTH)
    mixed = b'{"a": [{"b": [' * 40 + b"]}]}" * 40  # 160 levels
    assert json_depth_exceeds(mixed, MAX_JSON_DEPTH)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"data": "[" * 5000, "q": 'a \\" [[[ " {{{', "e": "\\\\"}).encode()
    assert not json_depth_exceeds(text, MAX_JSON_DEPTH)
    parse_body(text)
    # many shallow containers: more brackets than the limit, but only two levels
    wide = json.dumps({"data": [[i] for i in range(5000)]}).encode()
    assert not json_depth_exceeds(wide, MAX_JSON_DEPTH)


def test_text_that_is_not_json_is_left_to_the_decoder() -> None:
    unbalanced = b'{"data": ' + b"[]," * 300 + b"]]]}"  # many brackets, shallow, not JSON
    assert not json_depth_exceeds(unbalanced, MAX_JSON_DEPTH)
    assert refused(unbalanced).details[0].type == "json_invalid"
    assert refused(b'{"data": ' + b"[" * 500).details[0].type == "too_deep"  # deep, whatever else


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 1000, 100_000])
def test_deep_bodies_are_a_clear_400_not_a_recursion_error(depth: int) -> None:
    raw = b'{"data": ' + nested(depth) + b"}"
    if depth + 1 <= MAX_JSON_DEPTH:
        parse_body(raw)
        return
    err = refused(raw)
    assert (err.message, err.details[0].type) == ("Body is nested too deeply", "too_deep")
    assert str(MAX_JSON_DEPTH) in err.details[0].msg
    unknown = refused(b'{"data": 1, "x": ' + nested(depth) + b"}")  # a skipped field too
    assert unknown.details[0].type == "too_deep"


def test_a_body_at_the_limit_is_accepted() -> None:
    parse_body(b'{"data": ' + nested(MAX_JSON_DEPTH - 1) + b"}")
    assert refused(b'{"data": ' + nested(MAX_JSON_DEPTH) + b"}").details[0].type == "too_deep"


def test_the_depth_check_is_linear_and_cheap() -> None:
    """10 MiB of brackets shaped against the check (no long runs, no quick reduction): about half
    a second on this machine's slowest core; a plain deep run is found at once."""
    zigzag = b"[[]" * (MAX_JSON_DEPTH - 1) + b"]" * MAX_JSON_DEPTH  # depth 128, no run of 128 "["
    adversarial = b"[" + b",".join([zigzag] * (10 * 1024 * 1024 // (len(zigzag) + 1))) + b"]"
    started = time.perf_counter()
    assert json_depth_exceeds(adversarial, MAX_JSON_DEPTH)
    assert time.perf_counter() - started < 3.0
    assert not json_depth_exceeds(adversarial[1:-1], MAX_JSON_DEPTH)  # the same at exactly the limit
    started = time.perf_counter()
    assert json_depth_exceeds(nested(5_000_000), MAX_JSON_DEPTH)
    assert time.perf_counter() - started < 0.5
    shallow = json.dumps({"data": [{"k": [i, {"v": i}]} for i in range(200_000)]}).encode()
    started = time.perf_counter()
    check_json(shallow)
    assert time.perf_counter() - started < 1.0


# --------------------------------------------------------------------------------------------------
# Batches


def test_batch_checks_the_whole_body_once_and_allows_items_as_deep_as_a_trace() -> None:
    item = b'{"data": ' + nested(MAX_JSON_DEPTH - 1) + b"}"  # as deep as a single trace may be
    batch = _decode_batch(b'{"traces": [' + item + b"]}")
    parse_body(bytes(batch.traces[0]), checked=True)
    with pytest.raises(ApiError) as info:
        _decode_batch(b'{"traces": [' + nested(MAX_JSON_DEPTH + BATCH_NESTING) + b"]}")
    assert (info.value.status, info.value.details[0].type) == (400, "too_deep")
    with pytest.raises(ApiError) as info:
        _decode_batch(b'{"traces": [{"data": 1, "x": "\xff"}]}')  # an item's skipped field
    assert (info.value.status, info.value.details[0].type) == (400, "utf8_invalid")
    with pytest.raises(ApiError) as info:
        _decode_batch(b'{"traces": [' + nested(5000) + b"]}")
    assert info.value.details[0].type == "too_deep"


@pytest.mark.parametrize("value", ["ok\n", "", "otlp:abc", "é", "x" * 256])
def test_batch_external_ids_follow_the_header_rule(value: str) -> None:
    with pytest.raises(BodyInvalid):
        _external_id(msgspec.json.encode({"data": 1, "externalId": value}))


# --------------------------------------------------------------------------------------------------
# OTLP: JSON and protobuf


def _json_value(depth: int, kind: str = "arrayValue") -> bytes:
    """An OTLP JSON AnyValue nested ``depth`` levels (built as text: json.dumps would recurse)."""
    if kind == "arrayValue":
        opening, closing = b'{"arrayValue": {"values": [', b"]}}"
    else:
        opening, closing = b'{"kvlistValue": {"values": [{"key": "k", "value": ', b"}]}}"
    return opening * depth + b'{"stringValue": "leaf"}' + closing * depth


def _json_request(value: bytes, where: str = "span") -> bytes:
    """``value`` as an attribute of a span, or of the span's event (two levels deeper)."""
    attributes = b'[{"key": "deep", "value": ' + value + b"}]"
    owner = b'"attributes": ' + attributes
    if where == "event":
        owner = b'"events": [{"name": "e", "attributes": ' + attributes + b"}]"
    span = b'{"traceId": "%s", "spanId": "%s", "name": "s", %s}' % (TRACE.encode(), SPAN.encode(), owner)
    return b'{"resourceSpans": [{"scopeSpans": [{"spans": [' + span + b"]}]}]}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _protobuf_request(depth: int, kind: str = "arrayValue", where: str = "span") -> bytes:
    """Hand-encoded, since the protobuf library itself refuses to build messages this deep."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        if kind == "arrayValue":
            value = _field(5, _field(1, value))  # AnyValue.array_value{values}
        else:
            value = _field(
                6, _field(1, _field(1, b"k") + _field(2, value))
            )  # kvlist_value{values{key, value}}
    attribute = _field(1, b"deep") + _field(2, value)  # KeyValue
    owner = _field(9, attribute)  # Span.attributes
    if where == "event":
        owner = _field(11, _field(2, b"e") + _field(3, attribute))  # Span.events{name, attributes}
    span = _field(1, bytes.fromhex(TRACE)) + _field(2, bytes.fromhex(SPAN)) + _field(5, b"s") + owner
    return _field(1, _field(2, _field(2, span)))  # resource_spans{scope_spans{spans}}


def _deep_attribute(decoded: DecodedExport, where: str) -> object:
    span = decoded.parts[0].spans[0]
    return span.events[0].attributes["deep"] if where == "event" else span.attributes["deep"]


@pytest.mark.parametrize("where", ["span", "event"])
@pytest.mark.parametrize("kind", ["arrayValue", "kvlistValue"])
def test_otlp_values_at_the_limit_decode_in_both_encodings(kind: str, where: str) -> None:
    for decoded in (
        decode_json(_json_request(_json_value(MAX_VALUE_DEPTH, kind), where)),
        decode_protobuf(_protobuf_request(MAX_VALUE_DEPTH, kind, where)),
    ):
        assert not decoded.rejected and len(decoded.parts) == 1
        value: Any = _deep_attribute(decoded, where)  # nested lists and dicts, walked below
        for _ in range(MAX_VALUE_DEPTH):
            value = value[0] if kind == "arrayValue" else value["k"]
        assert value == "leaf"
    assert ExportTraceServiceRequest.FromString(_protobuf_request(3, kind, where)).resource_spans


@pytest.mark.parametrize("where", ["span", "event"])
@pytest.mark.parametrize("kind", ["arrayValue", "kvlistValue"])
@pytest.mark.parametrize("depth", [MAX_VALUE_DEPTH + 1, 45, 450])
def test_otlp_values_nested_too_deeply_are_refused_in_both_encodings(
    kind: str, where: str, depth: int
) -> None:
    for decode, raw in (
        (decode_json, _json_request(_json_value(depth, kind), where)),
        (decode_protobuf, _protobuf_request(depth, kind, where)),
    ):
        with pytest.raises(OtlpInvalid) as info:
            decode(raw)
        assert "nested too deeply" in info.value.message, (decode.__name__, info.value.message)


def test_otlp_json_must_be_utf8_everywhere() -> None:
    raw = _json_request(_json_value(0)).replace(b"leaf", b"le\xffaf")
    with pytest.raises(OtlpInvalid) as info:
        decode_json(raw)
    assert "UTF-8" in info.value.message
    unknown = b'{"unknownField": "\xff", "resourceSpans": []}'
    with pytest.raises(OtlpInvalid):
        decode_json(unknown)


def test_otlp_protobuf_strings_must_be_utf8() -> None:
    raw = _protobuf_request(0).replace(b"leaf", b"le\xffa")
    with pytest.raises(OtlpInvalid):
        decode_protobuf(raw)


# --------------------------------------------------------------------------------------------------
# Admin request structs: the registry's rules, stated where the schema can say them


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({"name": "Acme"}, True),
        ({"name": "  Acme  "}, True),  # surrounding whitespace is dropped by the registry
        ({"name": "\ufeffAcme"}, True),  # not whitespace for Python's strip (nor for the registry)
        ({"name": ""}, False),
        ({"name": "   "}, False),
        ({"name": "\u3000\u00a0"}, False),
        ({"name": "a\u0000b"}, False),
        ({"name": "a\u0085b"}, False),  # C1 control
        ({"name": "Acme\n"}, False),  # Python's $ would let this one through
        ({"name": "x" * 201}, False),
        ({"name": "Acme", "extra": 1}, False),
    ],
)
def test_project_names(body: dict, ok: bool) -> None:
    try:
        decoded = msgspec.json.decode(msgspec.json.encode(body), type=admin.ProjectIn)
        admin._refuse_trailing_newline(decoded)
    except (msgspec.ValidationError, ApiError):
        assert not ok, body
    else:
        assert ok, body


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({"name": "n", "type": "n8n", "workflow_id": "wf-1"}, True),
        ({"name": "n", "type": "zapier"}, False),
        ({"name": "n", "type": "n8n", "workflow_id": " wf"}, False),
        ({"name": "n", "type": "n8n", "workflow_id": ""}, False),
        ({"name": "n", "type": "custom", "otlp_service_name": "checkout"}, True),
        ({"name": "n", "type": "custom", "otlp_service_name": "check\tout"}, False),
        ({"name": "n", "type": "n8n", "workflowId": "wf"}, False),
    ],
)
def test_platform_bodies(body: dict, ok: bool) -> None:
    try:
        msgspec.json.decode(msgspec.json.encode(body), type=admin.PlatformIn)
    except msgspec.ValidationError:
        assert not ok, body
    else:
        assert ok, body


def test_admin_rule_violations_name_the_rule_not_the_regex() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(b'{"name": "   "}', type=admin.ProjectIn)
    detail = detail_from_msgspec(info.value, admin.RULES)
    assert detail.path == "name" and detail.msg == f"name must be {admin.NAME_RULE}"
    assert "regex" not in detail.msg
