"""How the console shows things: escaping (markup, quotes, control characters), times, ages."""

from __future__ import annotations

import datetime as dt

from console.render import ENV, age, exact, relative

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def test_every_value_is_escaped_and_control_characters_are_visible() -> None:
    template = ENV.from_string('<p title="{{ v }}">{{ v }}</p>')
    out = template.render(v="<script>alert(1)</script> \"q\" 'a' nul\x00 esc\x1b")
    assert "<script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&#34;q&#34;" in out and "&#39;a&#39;" in out
    assert "\x00" not in out and "nul\\u0000" in out and "esc\\u001b" in out


def test_newlines_and_tabs_stay_for_the_payload_viewer() -> None:
    assert ENV.from_string("{{ v }}").render(v="a\n\tb") == "a\n\tb"


def test_relative_and_exact_times() -> None:
    assert relative(None, NOW) == "Never"
    assert relative(NOW - dt.timedelta(seconds=3), NOW) == "just now"
    assert relative(NOW - dt.timedelta(seconds=42), NOW) == "42 seconds ago"
    assert relative(NOW - dt.timedelta(minutes=1, seconds=5), NOW) == "1 minute ago"
    assert relative(NOW - dt.timedelta(hours=5), NOW) == "5 hours ago"
    assert relative(NOW - dt.timedelta(days=31), NOW) == "31 days ago"
    assert relative(NOW + dt.timedelta(seconds=5), NOW) == "just now"  # clocks disagree a little
    assert exact(NOW) == "2026-11-28 12:00:00 UTC" and exact(None) == ""


def test_ages() -> None:
    assert [age(s) for s in (None, 5, 125, 3 * 3600 + 600, 2 * 86400)] == [
        "-",
        "5 s",
        "2 min",
        "3 h 10 min",
        "2 days",
    ]
