"""The pages' pure decisions: a key's scope and stale marker, form errors next to their fields,
the dead-letter filters, trace lookup input, and the pipeline's rates and reconciliation."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
from multidict import MultiDict

from console.dead_letters import parse_filters
from console.pages.forms import field_errors
from console.pages.keys import is_stale, scope_label
from console.pages.traces import check_ref, pretty
from console.pipeline import REPLAYED, checks_with_replays, counters, metrics_urls, rates, sum_samples
from shared.devstack.reconcile import COUNTERS
from shared.registry import ApiKey, Conflict, InvalidInput, PlatformRef, Problem
from shared.runtime.settings import Settings

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)


def key(
    *, restricted: bool, platforms: list[str], last_used: dt.datetime | None, created: dt.datetime = NOW
) -> ApiKey:
    refs = [PlatformRef(uuid.uuid4(), name) for name in platforms]
    return ApiKey(
        id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        name="k",
        masked="mibo_...abcd",
        restricted=restricted,
        platform_ids=[r.id for r in refs],
        platforms=refs,
        created_at=created,
        last_used_at=last_used,
    )


def test_scope_labels() -> None:
    assert scope_label(key(restricted=False, platforms=[], last_used=None)) == "All platforms"
    assert scope_label(key(restricted=True, platforms=["a", "b"], last_used=None)) == "a, b"
    assert scope_label(key(restricted=True, platforms=[], last_used=None)) == "restricted, no platform left"


def test_stale_after_n_days_unused_or_never_used() -> None:
    days = 30
    assert not is_stale(key(restricted=False, platforms=[], last_used=NOW - dt.timedelta(days=29)), NOW, days)
    assert is_stale(key(restricted=False, platforms=[], last_used=NOW - dt.timedelta(days=30)), NOW, days)
    old = NOW - dt.timedelta(days=40)
    assert is_stale(key(restricted=False, platforms=[], last_used=None, created=old), NOW, days)
    assert not is_stale(key(restricted=False, platforms=[], last_used=None, created=NOW), NOW, days)


def test_registry_refusals_go_next_to_their_fields() -> None:
    conflict = Conflict(
        'workflow_id "wf" is taken', [Problem("unique", 'workflow_id "wf" is taken', "workflow_id")]
    )
    assert field_errors(conflict, {"name", "workflow_id"}) == {"workflow_id": ['workflow_id "wf" is taken']}
    scoped = InvalidInput("bad", [Problem("platform_scope", "not yours", "platform_ids[1]")])
    assert field_errors(scoped, {"name", "platform_ids"}) == {"platform_ids": ["not yours"]}
    assert field_errors(InvalidInput("odd", [Problem("x", "odd", "elsewhere")]), {"name"}) == {"": ["odd"]}
    assert field_errors(InvalidInput("plain"), {"name"}) == {"": ["plain"]}


def test_dead_letter_filters_ignore_what_they_do_not_know() -> None:
    f = parse_filters(MultiDict(reason="platform_ambiguous", newer_than="1h", state="all", key="k"))
    assert (f.reason, f.newer_than, f.state, f.key) == ("platform_ambiguous", "1h", "all", "k")
    odd = parse_filters(MultiDict(newer_than="3w", state="gone", reason="a\x00b"))
    assert (odd.newer_than, odd.state, odd.reason) == ("", "open", "")
    args = f.args(uuid.UUID(int=1))
    assert args.reason == ["platform_ambiguous"] and args.newer_than == dt.timedelta(hours=1)
    assert args.project == str(uuid.UUID(int=1)) and args.older_than is None


def test_lookup_refs_and_the_payload_viewer() -> None:
    assert check_ref("exec-42") == "" and check_ref(str(uuid.uuid4())) == ""
    assert "control characters" in check_ref("a\x00b")
    assert "at most" in check_ref("x" * 401)
    text, cut = pretty(msgspec.Raw(b'{"a":[1,{"b":"</pre><script>"}]}'))
    assert not cut and text.startswith('{\n  "a": [') and "</pre><script>" in text  # escaped when rendered
    big, cut = pretty(msgspec.Raw(msgspec.json.encode({"x": "y" * 300_000})))
    assert cut and len(big) == 256 * 1024
    assert pretty(None) == ("null", False)


METRICS_A = """# TYPE ingest_traces_accepted_total counter
ingest_traces_accepted_total 10.0
"""
METRICS_B = """# TYPE router_routed_total counter
router_routed_total{resolved_by="hint"} 6.0
router_routed_total{resolved_by="scope"} 3.0
# TYPE router_dead_lettered_total counter
router_dead_lettered_total{reason="platform_ambiguous"} 2.0
"""


def test_samples_are_summed_over_labels_and_services() -> None:
    totals = sum_samples([METRICS_A, METRICS_B])
    assert totals["ingest_traces_accepted_total"] == 10.0 and totals["router_routed_total"] == 9.0
    values = counters(totals)
    assert set(values) == {label for label, _, _ in COUNTERS}
    assert values["router dead-lettered"] == 2.0 and values["storage stored"] == 0.0


def test_rates_between_readings_and_after_a_restart() -> None:
    assert rates([(0.0, {"ingest accepted": 5})])["accepted"] is None
    found = rates(
        [
            (0.0, {"ingest accepted": 5, "router routed": 100}),
            (2.0, {"ingest accepted": 15, "router routed": 4}),
        ]
    )
    assert found["accepted"] == 5.0
    assert found["routed"] == 2.0  # the counter went down (restart): counted from zero


def test_replayed_records_count_as_accepted_in_the_reconciliation() -> None:
    values = {label: 0.0 for label, _, _ in COUNTERS}
    values.update({"ingest accepted": 3, "router routed": 3, "router dead-lettered": 1, "storage stored": 3})
    assert not all(checks_with_replays(values, 0).values())  # the replay reached the router only
    assert all(checks_with_replays(values, 1).values())
    assert REPLAYED == "dlq replays since the router started"


def test_metrics_urls_default_to_the_local_services() -> None:
    settings = Settings(ingest_port=8080, router_metrics_port=9101, storage_metrics_port=0)
    assert metrics_urls(settings) == ["http://127.0.0.1:8080/metrics", "http://127.0.0.1:9101/metrics"]
    given = Settings(console_metrics_urls=" http://a/metrics, http://b/metrics ")
    assert metrics_urls(given) == ["http://a/metrics", "http://b/metrics"]
