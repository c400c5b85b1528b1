"""The ingest service's Prometheus metrics (one registry per app, served at /metrics)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ingest_requests_total",
            "HTTP requests by route, status and error code",
            ["route", "status", "code"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "ingest_traces_accepted_total",
            "Traces acknowledged by Kafka and answered 202",
            registry=self.registry,
        )
        self.otlp_spans = Counter(
            "ingest_otlp_spans",
            "OTLP spans by outcome: accepted (in an acknowledged envelope) or rejected (partial success)",
            ["outcome"],
            registry=self.registry,
        )
        self.accepted_bytes = Counter(
            "ingest_accepted_bytes_total",
            "Decompressed body bytes of accepted traces",
            registry=self.registry,
        )
        self.produce_latency = Histogram(
            "ingest_produce_latency_seconds",
            "Time from send to Kafka's acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        # A 503 means the trace will not be stored (ingest_api.enqueue, shared.db.cancellations).
        self.kafka_up = Gauge(
            "ingest_kafka_up",
            "1 while the broker is believed reachable (the last send or probe succeeded), else 0",
            registry=self.registry,
        )
        self.fast_503 = Counter(
            "ingest_fast_503_total",
            "Traces answered 503 at once, without producing, because the broker was known to be unreachable",
            registry=self.registry,
        )
        self.unproduced_503 = Counter(
            "ingest_unproduced_503_total",
            "Traces answered 503 that the producer never took (no metadata or buffer space in time): nothing to cancel",
            registry=self.registry,
        )
        self.cancelled = Counter(
            "ingest_traces_cancelled_total",
            "Traces handed to Kafka but not acknowledged in time, cancelled in PostgreSQL, then answered 503",
            registry=self.registry,
        )
        self.cancel_found_stored = Counter(
            "ingest_cancel_found_stored_total",
            "Traces whose acknowledgement was late but that were found stored when cancelling: answered as queued",
            registry=self.registry,
        )
        self.unfenced_503 = Counter(
            "ingest_unfenced_503_total",
            "Traces answered 503 that could not be cancelled (PostgreSQL unreachable): stored if they reach Kafka",
            registry=self.registry,
        )
        self.late_acks = Counter(
            "ingest_late_acks_total",
            "Records Kafka acknowledged after their trace was answered 503 (the storage worker refuses cancelled ones)",
            registry=self.registry,
        )
        self.discarded = Counter(
            "ingest_discarded_records_total",
            "Records of traces answered 503 dropped from the producer's buffer during an outage: never sent",
            registry=self.registry,
        )
        self.registry_size = Gauge("ingest_key_registry_size", "Keys held in memory", registry=self.registry)
        self.registry_age = Gauge(
            "ingest_key_registry_refresh_age_seconds",
            "Seconds since the key registry's last full load (-1 before the first)",
            registry=self.registry,
        )
        self.registry_lookups = Gauge(
            "ingest_key_registry_db_lookups", "Database lookups made for unknown keys", registry=self.registry
        )

        self._request_children: dict[tuple[str, int, str], Any] = {}

    def count_request(self, route: str, status: int, code: str) -> None:
        """One answered request (``requests``); the labelled child is looked up once per label set,
        not per request (prometheus_client's ``labels()`` takes a lock and builds its key each time)."""
        child = self._request_children.get((route, status, code))
        if child is None:
            child = self._request_children[(route, status, code)] = self.requests.labels(
                route, str(status), code
            )
        child.inc()

    def watch_registry(
        self, size: Callable[[], float], age: Callable[[], float], lookups: Callable[[], float]
    ) -> None:
        self.registry_size.set_function(size)
        self.registry_age.set_function(age)
        self.registry_lookups.set_function(lookups)

    def watch_kafka(self, up: Callable[[], float]) -> None:
        self.kafka_up.set_function(up)
