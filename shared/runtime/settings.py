"""Configuration from environment variables: the one table the README documents.

Every setting is declared once in ``SETTINGS`` (name, default, meaning); ``Settings.from_env``
reads them into a typed, immutable struct. ``tests/test_settings.py`` checks that the README's
configuration table lists exactly these variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

DEV_PEPPER = "mibo-ingest-dev-pepper-change-me"


@dataclass(frozen=True, slots=True)
class Setting:
    env: str
    default: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        "",
        "PostgreSQL URL (`postgresql://user:pw@host:port/db`). Empty: `dev up` starts the embedded PostgreSQL.",
    ),
    Setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "Kafka bootstrap servers, comma-separated."),
    Setting("KAFKA_TOPIC_PREFIX", "", "Prefix for the three topic names (`<prefix>traces.raw`, ...)."),
    Setting("KAFKA_TOPIC_PARTITIONS", "6", "Partitions of each topic when the service creates it."),
    Setting(
        "KAFKA_REPLICATION_FACTOR",
        "1",
        "Replication factor of each topic when the service creates it.",
    ),
    Setting("INGEST_HOST", "0.0.0.0", "Address the ingest API listens on."),
    Setting("INGEST_PORT", "8080", "Port the ingest API listens on."),
    Setting(
        "INGEST_WORKERS",
        "1",
        "Ingest processes sharing the port (SO_REUSEPORT); one per core is a good start.",
    ),
    Setting("ADMIN_TOKEN", "", "Bearer token for `/admin/v1/*`. Empty: the admin API is off (404)."),
    Setting(
        "KEY_PEPPER",
        DEV_PEPPER,
        "Server-side secret for HMAC-SHA256 key hashes. Set it in production; the default logs a loud warning.",
    ),
    Setting("MAX_BODY_BYTES", "10485760", "Largest accepted trace body, after decompression (bytes)."),
    Setting("BATCH_MAX_TRACES", "1000", "Most traces one `POST /public/traces/batch` may carry."),
    Setting(
        "PRODUCE_TIMEOUT_SECONDS",
        "5",
        "How long the ingest API waits for Kafka's acknowledgement before answering 503.",
    ),
    Setting("METRICS_HOST", "0.0.0.0", "Address the workers' `/metrics` and `/healthz` listen on."),
    Setting("ROUTER_METRICS_PORT", "9101", "Router worker's metrics port (0: off)."),
    Setting("STORAGE_METRICS_PORT", "9102", "Storage worker's metrics port (0: off)."),
    Setting("ROUTER_BATCH_MAX", "500", "Most records the router takes per batch."),
    Setting("STORAGE_BATCH_MAX", "500", "Most records the storage worker writes per database transaction."),
    Setting(
        "LAST_USED_FLUSH_SECONDS", "2", "How often the storage worker writes keys' coalesced `last_used_at`."
    ),
    Setting(
        "REGISTRY_REFRESH_SECONDS",
        "30",
        "Backstop full reload of the in-memory key/platform registries (NOTIFY does the rest).",
    ),
    Setting(
        "LOG_FORMAT",
        "auto",
        "`json`, `console`, or `auto` (console on a terminal, JSON otherwise).",
    ),
    Setting("LOG_LEVEL", "info", "Minimum log level: debug, info, warning, error."),
    Setting(
        "HEADER_READ_TIMEOUT_SECONDS",
        "10",
        "Longest the ingest API waits for a request's headers once a connection opens or a new "
        "request starts; then 408 and the connection is closed.",
    ),
    Setting(
        "BODY_READ_TIMEOUT_SECONDS",
        "60",
        "Longest the ingest API spends reading one request body, across all its chunks; then 408.",
    ),
    Setting(
        "MAX_INFLIGHT_BYTES",
        "67108864",
        "Request body bytes one ingest process holds at once (as received and as inflated); a "
        "request that does not fit is answered 503 with `Retry-After` at once. The process's "
        "memory for them peaks at about 5x this (body, envelope, producer batch, compressed copy).",
    ),
    Setting(
        "SHUTDOWN_TIMEOUT_SECONDS",
        "30",
        "Longest a service takes from SIGTERM to exit: drain, flush, then exit anyway (logged).",
    ),
)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    kafka_bootstrap_servers: str
    kafka_topic_prefix: str
    kafka_topic_partitions: int
    kafka_replication_factor: int
    ingest_host: str
    ingest_port: int
    ingest_workers: int
    admin_token: str
    key_pepper: str
    max_body_bytes: int
    batch_max_traces: int
    produce_timeout_seconds: float
    metrics_host: str
    router_metrics_port: int
    storage_metrics_port: int
    router_batch_max: int
    storage_batch_max: int
    last_used_flush_seconds: float
    registry_refresh_seconds: float
    log_format: str
    log_level: str
    header_read_timeout_seconds: float
    body_read_timeout_seconds: float
    max_inflight_bytes: int
    shutdown_timeout_seconds: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = {s.env.lower(): env.get(s.env, s.default) for s in SETTINGS}
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SystemExit(f"invalid configuration: {exc}") from None
        if not settings.key_pepper:
            raise SystemExit(
                "invalid configuration: KEY_PEPPER must not be empty (keys would be hashed unkeyed)"
            )
        return settings

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver SQLAlchemy needs."""
        return sqlalchemy_url(self.database_url)

    @property
    def uses_dev_pepper(self) -> bool:
        return self.key_pepper == DEV_PEPPER


def sqlalchemy_url(database_url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise SystemExit("DATABASE_URL must start with postgresql://")


def libpq_url(database_url: str) -> str:
    """The database URL as libpq (psycopg.connect) reads it."""
    return sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://", 1)
