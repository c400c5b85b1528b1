"""The ingest service's Prometheus metrics (one registry per app, served at /metrics)."""

from __future__ import annotations

from collections.abc import Callable

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
        self.registry_size = Gauge("ingest_key_registry_size", "Keys held in memory", registry=self.registry)
        self.registry_age = Gauge(
            "ingest_key_registry_refresh_age_seconds",
            "Seconds since the key registry's last full load (-1 before the first)",
            registry=self.registry,
        )
        self.registry_lookups = Gauge(
            "ingest_key_registry_db_lookups", "Database lookups made for unknown keys", registry=self.registry
        )

    def watch_registry(
        self, size: Callable[[], float], age: Callable[[], float], lookups: Callable[[], float]
    ) -> None:
        self.registry_size.set_function(size)
        self.registry_age.set_function(age)
        self.registry_lookups.set_function(lookups)
