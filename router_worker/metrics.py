"""The router's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.runtime.worker import lag_gauge


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "router_consumed_total", "Records read from traces.raw", registry=self.registry
        )
        self.routed = Counter(
            "router_routed_total", "Traces written to traces.routed, by how the platform was resolved",
            ["resolved_by"], registry=self.registry,
        )  # fmt: skip
        self.dead_lettered = Counter(
            "router_dead_lettered_total",
            "Records written to traces.dlq, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "router_batch_size",
            "Records per batch",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "router_batch_seconds",
            "From a batch's arrival to all its outputs acknowledged",
            registry=self.registry,
        )
        self.snapshot_reloads = Counter(
            "router_registry_forced_reloads_total",
            "Platform snapshot reloads forced by a trace newer than the snapshot",
            registry=self.registry,
        )
        self.lag = lag_gauge(self.registry, "router")
        self.snapshot_age = Gauge(
            "router_platform_snapshot_age_seconds", "Age of the platform snapshot", registry=self.registry
        )
