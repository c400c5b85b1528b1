"""Content types, encodings and bounded decompression (pure)."""

from __future__ import annotations

import gzip
import os

import pytest
import zstandard

from ingest_api.content import decode_content
from ingest_api.responses import ApiError

BODY = b'{"data": {"input": "...", "output": "..."}}'


def err(data: bytes, content_type: str, content_encoding: str, limit: int) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_content(data, content_type, content_encoding, limit)
    return info.value


def test_plain_json() -> None:
    assert decode_content(BODY, "application/json; charset=utf-8", "", 1000) == BODY
    assert decode_content(BODY, "", "", 1000) == BODY


def test_gzip_under_both_content_types() -> None:
    packed = gzip.compress(BODY)
    assert decode_content(packed, "application/json", "gzip", 1000) == BODY
    assert decode_content(packed, "application/octet-stream", "gzip", 1000) == BODY
    assert decode_content(packed, "application/octet-stream", "", 1000) == BODY  # sniffed


def test_zstd() -> None:
    assert decode_content(zstandard.compress(BODY), "application/json", "zstd", 1000) == BODY


def test_bombs_stop_at_the_limit() -> None:
    bomb = gzip.compress(b"0" * (50 * 1024 * 1024))
    assert len(bomb) < 100_000
    assert err(bomb, "application/json", "gzip", 10 * 1024 * 1024).status == 413
    zbomb = zstandard.compress(b"0" * (50 * 1024 * 1024))
    assert err(zbomb, "application/json", "zstd", 10 * 1024 * 1024).status == 413


def test_refusals() -> None:
    assert err(BODY, "text/plain", "", 1000).status == 415
    assert err(BODY, "application/x-www-form-urlencoded", "", 1000).code == "UNSUPPORTED_MEDIA_TYPE"
    assert err(BODY, "application/octet-stream", "", 1000).status == 415  # not gzip
    assert err(BODY, "application/json", "br", 1000).status == 415
    broken = err(os.urandom(64), "application/json", "gzip", 1000)
    assert broken.status == 400 and broken.details[0].path == "Content-Encoding"
    truncated = err(gzip.compress(BODY)[:-10], "application/json", "gzip", 1000)
    assert truncated.status == 400
