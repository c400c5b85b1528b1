"""A compressed body is exactly one gzip member or one zstd frame: whatever follows is refused
with a 400 that says what it is, never silently dropped (pure)."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from ingest_api.content import decode_content
from ingest_api.responses import ApiError

BODY = b'{"data": {"input": "...", "output": "..."}}'
OTHER = b'{"data": {"input": "another trace", "output": "!"}}'


def refused(data: bytes, encoding: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_content(data, "application/json", encoding, 1_000_000)
    err = info.value
    assert err.status == 400 and err.code == "VALIDATION_ERROR"
    assert err.details[0].path == "Content-Encoding" and err.details[0].location == "header"
    return err


def test_a_second_gzip_member_is_refused() -> None:
    err = refused(gzip.compress(BODY) + gzip.compress(OTHER), "gzip")
    assert "more than one gzip member" in err.message


def test_trailing_bytes_after_gzip_are_refused() -> None:
    err = refused(gzip.compress(BODY) + b"garbage", "gzip")
    assert "7 bytes follow the end of the gzip stream" in err.message
    assert "1 bytes follow" in refused(gzip.compress(BODY) + b"\0", "gzip").message


def test_sniffed_gzip_under_octet_stream_gets_the_same_care() -> None:
    with pytest.raises(ApiError) as info:
        decode_content(gzip.compress(BODY) + gzip.compress(OTHER), "application/octet-stream", "", 10_000)
    assert info.value.status == 400 and "more than one gzip member" in info.value.message


def test_a_second_zstd_frame_is_refused() -> None:
    err = refused(zstandard.compress(BODY) + zstandard.compress(OTHER), "zstd")
    assert "more than one zstd frame" in err.message


def test_trailing_bytes_after_zstd_are_refused() -> None:
    err = refused(zstandard.compress(BODY) + b"garbage", "zstd")
    assert "7 bytes follow the end of the zstd frame" in err.message
    with_checksum = zstandard.ZstdCompressor(write_checksum=True).compress(BODY)
    assert decode_content(with_checksum, "application/json", "zstd", 1000) == BODY
    assert "3 bytes follow" in refused(with_checksum + b"xyz", "zstd").message


def test_truncated_zstd_is_refused_not_read_as_empty() -> None:
    packed = zstandard.compress(BODY * 50)
    assert "truncated" in refused(packed[:-3], "zstd").message
    assert "does not start with a zstd frame" in refused(b"not zstd at all", "zstd").message


def test_single_streams_of_every_kind_still_decode() -> None:
    big = BODY * 20_000  # several zstd blocks, several deflate blocks
    assert decode_content(gzip.compress(big), "application/json", "gzip", 10_000_000) == big
    assert decode_content(zstandard.compress(big), "application/json", "zstd", 10_000_000) == big
    level = zstandard.ZstdCompressor(level=19, write_checksum=True, write_content_size=False)
    assert decode_content(level.compress(big), "application/json", "zstd", 10_000_000) == big
    streamed = level.compressobj()
    chunks = streamed.compress(big[:100_000]) + streamed.compress(big[100_000:]) + streamed.flush()
    assert decode_content(chunks, "application/json", "zstd", 10_000_000) == big
