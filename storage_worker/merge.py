"""The OTLP merge rule, as pure functions: a trace is the union of its spans over every export.

Each span version carries ``(received_at, part_id)`` — when the export that carried it was
received, and that export's envelope id (a UUIDv7). Of two versions of one span id the greater
wins. That makes the merge a last-writer-wins map keyed by span id: commutative, associative and
idempotent, so exports may be merged in any order, several times over (re-delivery, replay), in
the batch (:func:`fold`) or against what is stored (``write.py`` applies the same comparison in
``INSERT ... ON CONFLICT (trace_id, span_id) DO UPDATE WHERE``), and always give the same trace.

Trace-level columns (platform, key, metadata = resource, received-at) are those of the newest part
(``(received_at, id)``; against the stored row, by received-at alone, since the stored row's id
is derived from the trace, not a part — parts of a trace share a partition, so even an exact tie
is decided the same way on every run).

:func:`classify` names what became of each part once the database answered: ``stored`` (it
created the trace), ``merged`` (some of its spans were written), ``duplicate`` (nothing written and
the stored spans are its own: a re-delivery) or ``stale`` (nothing written: newer versions of all
its spans were there already).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Literal

import msgspec

from storage_worker.rows import Pending, SpanVersion, TraceRow


def merge_spans(*groups: Iterable[SpanVersion]) -> tuple[SpanVersion, ...]:
    """The newest version of every span id, in order of first appearance."""
    best: dict[str, SpanVersion] = {}
    for group in groups:
        for span in group:
            current = best.get(span.span_id)
            if current is None or span.version > current.version:
                best[span.span_id] = span
    return tuple(best.values())


def _version(row: TraceRow) -> tuple[object, uuid.UUID]:
    return (row.received_at, row.id)


def fold(current: Pending, item: Pending) -> Pending:
    """Merge a further part of the same trace into the write ``current`` (built by earlier folds).

    The write keeps the newest part's row and source, the merged spans, and every original part."""
    parts = (*current.originals, item)
    head = max(parts, key=lambda p: _version(p.row))
    row = msgspec.structs.replace(head.row, spans=merge_spans(current.row.spans, item.row.spans))
    return Pending(row, head.source, parts)


PartOutcome = Literal["stored", "merged", "duplicate", "stale"]


def classify(
    parts: Sequence[TraceRow],
    *,
    inserted: bool,
    written: Set[tuple[str, uuid.UUID]],
    stored: Mapping[str, uuid.UUID],
) -> dict[uuid.UUID, PartOutcome]:
    """Outcome of every original part of one trace's write.

    ``inserted``: the write created the trace row. ``written``: (span id, part id) of the span
    versions the database wrote. ``stored``: span id → part id of the version stored now, for the
    spans of parts that wrote nothing."""
    head = max(parts, key=_version).id
    out: dict[uuid.UUID, PartOutcome] = {}
    for part in parts:
        if inserted and part.id == head:
            out[part.id] = "stored"
        elif any((span.span_id, part.id) in written for span in part.spans):
            out[part.id] = "merged"
        elif any(stored.get(span.span_id) == part.id for span in part.spans):
            out[part.id] = "duplicate"
        else:
            out[part.id] = "stale"
    return out
