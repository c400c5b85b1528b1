"""The storage worker's Prometheus metrics (served on ``STORAGE_METRICS_PORT``).

Every record read ends in exactly one of: stored, replaced, merged, duplicate, stale,
cancelled (answered 503 by the ingest API: never stored), dead-lettered — so ``accepted = stored + replaced + merged + stale + dead-lettered (router +
storage)`` can be checked across the pipeline (duplicates are re-deliveries of records already
counted once). ``merged`` is an OTLP part whose spans joined a trace already stored (or another
part of it in the same batch).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.runtime.worker import lag_gauge


class StorageMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stored = Counter("storage_traces_stored", "New trace rows written", registry=r)
        self.replaced = Counter(
            "storage_traces_replaced", "Stored traces overwritten by a newer version (same external id)",
            registry=r,
        )  # fmt: skip
        self.merged = Counter(
            "storage_otlp_parts_merged", "OTLP parts whose spans were merged into a stored trace", registry=r
        )
        self.duplicates = Counter(
            "storage_duplicates_ignored", "Records already stored (re-delivery, replay): nothing written",
            registry=r,
        )  # fmt: skip
        self.stale = Counter(
            "storage_stale_versions_ignored",
            "Older versions of a trace that arrived after (or in the same batch as) a newer one: never written",
            registry=r,
        )
        self.cancelled = Counter(
            "storage_cancelled_ignored",
            "Records the ingest API answered 503 and cancelled (shared.db.cancellations): never stored",
            registry=r,
        )
        self.dead_lettered = Counter(
            "storage_dead_lettered", "Records written to traces.dlq by the storage worker, by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.database_errors = Counter(
            "storage_database_errors",
            "Batch writes that failed for a reason other than their data (the batch is retried)",
            registry=r,
        )
        self.batch_size = Histogram(
            "storage_batch_size", "Records per batch",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=r,
        )  # fmt: skip
        self.flush_latency = Histogram(
            "storage_flush_latency_seconds", "One batch's database transaction, from COPY to COMMIT",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )  # fmt: skip
        self.lag = lag_gauge(r, "storage")
        # the dead-letter index (storage_worker.dlq_index), a consume loop of its own on traces.dlq
        self.dlq_indexed = Counter(
            "storage_dlq_indexed", "traces.dlq records added to the dead-letter index", registry=r
        )
        self.dlq_index_duplicates = Counter(
            "storage_dlq_index_duplicates",
            "traces.dlq records indexed already (re-delivery): nothing written",
            registry=r,
        )
        self.dlq_index_refused = Counter(
            "storage_dlq_index_refused",
            "traces.dlq records PostgreSQL refused to index (skipped)",
            registry=r,
        )
        self.dlq_resolved = Counter(
            "storage_dlq_resolved",
            "Dead-letter index entries resolved: their trace was stored after all (a replay)",
            registry=r,
        )
        self.dlq_index_lag = lag_gauge(r, "storage_dlq_index")
