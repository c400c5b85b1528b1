"""``GET /public/traces`` query parsing, cursors and pages: pure."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from multidict import MultiDict

from ingest_api.endpoints.trace_list import Cursor, decode_cursor, encode_cursor, page, parse_query
from ingest_api.responses import ApiError

T0 = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def test_cursor_round_trips_and_refuses_anything_else() -> None:
    cursor = Cursor(T0, uuid.uuid4())
    assert decode_cursor(encode_cursor(cursor)) == cursor
    for bad in ("x", "!!!", encode_cursor(cursor)[:-3], "WzEsMl0"):
        with pytest.raises(ApiError) as info:
            decode_cursor(bad)
        assert info.value.status == 400 and info.value.details[0].path == "cursor"


def test_query_parameters() -> None:
    platform = uuid.uuid4()
    q = parse_query(MultiDict(platformId=str(platform), limit="5"))
    assert (q.platform_id, q.limit, q.after) == (platform, 5, None)
    assert parse_query(MultiDict()).limit == 20
    for name, value in (
        ("platformId", "nope"),
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-1"),
        ("limit", "1.5"),
    ):
        with pytest.raises(ApiError) as info:
            parse_query(MultiDict({name: value}))
        assert info.value.status == 400 and info.value.details[0].path == name


def test_a_page_of_limit_plus_one_rows_has_a_next_cursor() -> None:
    rows = [
        (uuid.uuid4(), uuid.uuid4(), None, "data", T0 - dt.timedelta(seconds=i), T0, T0) for i in range(3)
    ]
    first = page(rows, 2)
    assert [t["id"] for t in first["traces"]] == [str(rows[0][0]), str(rows[1][0])]
    assert decode_cursor(first["nextCursor"]) == Cursor(rows[1][4], rows[1][0])
    assert page(rows[:2], 2)["nextCursor"] is None and page([], 2) == {"traces": [], "nextCursor": None}
