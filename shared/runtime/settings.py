"""Configuration from environment variables: the one table the README documents.

Every setting is declared once, as a field of :class:`Settings` (type, default, meaning);
``Settings.from_env`` reads the environment into it, typed and immutable. The README's
configuration table is rendered from the same fields (``python -m shared.runtime.settings``), and
``tests/unit/test_settings.py`` checks that the README holds exactly that table.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from typing import Annotated

import msgspec
from msgspec import Meta

DEV_PEPPER = "mibo-ingest-dev-pepper-change-me"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting, declared once: its type, default and meaning. The environment variable is
    the field's name in upper case; the README's configuration table is this struct, rendered
    (``python -m shared.runtime.settings``, checked by ``tests/unit/test_settings.py``)."""

    database_url: Annotated[
        str,
        Meta(
            description="PostgreSQL URL (`postgresql://user:pw@host:port/db`). Empty: `dev up` starts the embedded PostgreSQL."
        ),
    ] = ""
    kafka_bootstrap_servers: Annotated[str, Meta(description="Kafka bootstrap servers, comma-separated.")] = (
        "127.0.0.1:9092"
    )
    kafka_topic_prefix: Annotated[
        str, Meta(description="Prefix for the three topic names (`<prefix>traces.raw`, ...).")
    ] = ""
    kafka_topic_partitions: Annotated[
        int, Meta(description="Partitions of each topic when the service creates it.")
    ] = 6
    kafka_replication_factor: Annotated[
        int,
        Meta(
            description="Replication factor of each topic when the service creates it; its `min.insync.replicas` is one less (at least 1), and unclean leader election is off."
        ),
    ] = 1
    kafka_max_poll_interval_seconds: Annotated[
        float,
        Meta(
            description="Longest a worker may take over one batch (a database outage, say) before its consumer leaves the group and its partitions go to the others; it rejoins when the batch is done."
        ),
    ] = 300.0
    ingest_host: Annotated[str, Meta(description="Address the ingest API listens on.")] = "0.0.0.0"
    ingest_port: Annotated[int, Meta(description="Port the ingest API listens on.")] = 8080
    ingest_workers: Annotated[
        int,
        Meta(description="Ingest processes sharing the port (SO_REUSEPORT); one per core is a good start."),
    ] = 1
    admin_token: Annotated[
        str, Meta(description="Bearer token for `/admin/v1/*`. Empty: the admin API is off (404).")
    ] = ""
    key_pepper: Annotated[
        str,
        Meta(
            description="Server-side secret for HMAC-SHA256 key hashes. Set it in production; the default logs a loud warning."
        ),
    ] = DEV_PEPPER
    max_body_bytes: Annotated[
        int, Meta(description="Largest accepted trace body, after decompression (bytes).")
    ] = 10485760
    batch_max_traces: Annotated[
        int, Meta(description="Most traces one `POST /public/traces/batch` may carry.")
    ] = 1000
    produce_timeout_seconds: Annotated[
        float,
        Meta(description="How long the ingest API waits for Kafka's acknowledgement before answering 503."),
    ] = 5.0
    metrics_host: Annotated[
        str, Meta(description="Address the workers' `/metrics` and `/healthz` listen on.")
    ] = "0.0.0.0"
    router_metrics_port: Annotated[int, Meta(description="Router worker's metrics port (0: off).")] = 9101
    storage_metrics_port: Annotated[int, Meta(description="Storage worker's metrics port (0: off).")] = 9102
    router_batch_max: Annotated[int, Meta(description="Most records the router takes per batch.")] = 500
    storage_batch_max: Annotated[
        int, Meta(description="Most records the storage worker writes per database transaction.")
    ] = 500
    last_used_flush_seconds: Annotated[
        float, Meta(description="How often the storage worker writes keys' coalesced `last_used_at`.")
    ] = 2.0
    trace_retention_days: Annotated[
        int,
        Meta(
            ge=0,
            description="Days a trace is kept after its last version was received; older ones are deleted "
            "(with their spans and aliases) by the storage worker, a small batch at a time, every "
            "10 minutes. 0: kept forever.",
        ),
    ] = 0
    registry_refresh_seconds: Annotated[
        float,
        Meta(
            description="Backstop full reload of the in-memory key/platform registries (NOTIFY does the rest)."
        ),
    ] = 30.0
    log_format: Annotated[
        str, Meta(description="`json`, `console`, or `auto` (console on a terminal, JSON otherwise).")
    ] = "auto"
    log_level: Annotated[str, Meta(description="Minimum log level: debug, info, warning, error.")] = "info"
    header_read_timeout_seconds: Annotated[
        float,
        Meta(
            description="Longest the ingest API waits for a request's headers once a connection opens or a new request starts; then 408 and the connection is closed."
        ),
    ] = 10.0
    body_read_timeout_seconds: Annotated[
        float,
        Meta(
            description="Longest the ingest API spends reading one request body, across all its chunks; then 408."
        ),
    ] = 60.0
    max_inflight_bytes: Annotated[
        int,
        Meta(
            description="Request body bytes one ingest process holds at once (as received and as inflated); a request that does not fit is answered 503 with `Retry-After` at once. The process's memory for them peaks at about 5x this (body, envelope, producer batch, compressed copy)."
        ),
    ] = 67108864
    shutdown_timeout_seconds: Annotated[
        float,
        Meta(
            description="Longest a service takes from SIGTERM to exit: drain, flush, then exit anyway (logged)."
        ),
    ] = 30.0
    cors_allowed_origins: Annotated[
        str,
        Meta(
            description="Origins whose browser pages may call the public trace routes (CORS), comma-separated: `https://app.example.com,http://localhost:5173`; `*` alone allows every origin. Empty: no CORS headers, and preflights are answered 403. The admin API never answers cross-origin."
        ),
    ] = ""
    console_host: Annotated[
        str,
        Meta(
            description="Address the operator console (`python -m console`) listens on; `0.0.0.0` to reach it from other machines (put TLS in front)."
        ),
    ] = "127.0.0.1"
    console_port: Annotated[int, Meta(description="Port the operator console listens on.")] = 8090
    console_session_seconds: Annotated[
        float,
        Meta(description="How long a console sign-in lasts; then the operator signs in again."),
    ] = 28800.0
    console_signin_attempts_per_minute: Annotated[
        int,
        Meta(
            description="Sign-in attempts the console takes per client address per minute; more are answered 429 with `Retry-After`."
        ),
    ] = 10
    console_stale_key_days: Annotated[
        int,
        Meta(description="The console marks an API key stale when it has not been used for this many days."),
    ] = 30
    console_metrics_urls: Annotated[
        str,
        Meta(
            description="The services' `/metrics` URLs the console's Pipeline page reads, comma-separated. Empty: the ingest API, router and storage worker on 127.0.0.1 at `INGEST_PORT`, `ROUTER_METRICS_PORT` and `STORAGE_METRICS_PORT`."
        ),
    ] = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = {name: env[name.upper()] for name in cls.__struct_fields__ if name.upper() in env}
        try:
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SystemExit(f"invalid configuration: {exc}") from None
        try:
            parse_origins(settings.cors_allowed_origins)
        except ValueError as exc:
            raise SystemExit(f"invalid configuration: CORS_ALLOWED_ORIGINS: {exc}") from None
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

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """``CORS_ALLOWED_ORIGINS`` as browsers write an ``Origin`` header (see ``parse_origins``)."""
        return parse_origins(self.cors_allowed_origins)


ANY_ORIGIN = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins, each serialised the way a browser sends its ``Origin`` header, so
    that an exact string comparison decides: scheme and host in lower case, the scheme's default
    port left out, no trailing slash (``HTTPS://App.example.com:443/`` → ``https://app.example.com``).
    ``*`` must stand alone. ValueError says what is wrong with an entry."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if ANY_ORIGIN in items:
        if len(items) > 1:
            raise ValueError("`*` already allows every origin: list no other origin beside it")
        return (ANY_ORIGIN,)
    return tuple(dict.fromkeys(_origin(item) for item in items))


def _origin(text: str) -> str:
    if text.lower() == "null":
        raise ValueError(
            "`null` is the origin of sandboxed frames and file: pages, which any page can create; "
            "it cannot be allowed"
        )
    if "*" in text:
        raise ValueError(f"{text!r}: wildcards are not supported; list each origin, or `*` alone")
    parts = urllib.parse.urlsplit(text)
    if (
        not parts.scheme
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "?" in text
        or "#" in text
        or parts.username is not None
    ):
        raise ValueError(f"{text!r} is not an origin: scheme://host[:port], with no path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a number from 0 to 65535") from None
    host = parts.hostname
    if not host.isascii():  # browsers send an internationalised host name in its ASCII form
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{text!r}: the host name is not a valid internationalised name") from None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def sqlalchemy_url(database_url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise SystemExit("DATABASE_URL must start with postgresql://")


def libpq_url(database_url: str) -> str:
    """The database URL as libpq (psycopg.connect) reads it."""
    return sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://", 1)


def _default_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every setting, in declaration order: the README's table."""
    return [
        (field.name.upper(), _default_text(field.default), field.type.__metadata__[0].description or "")
        for field in msgspec.structs.fields(Settings)
    ]


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in settings_table()]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m shared.runtime.settings: the README's configuration table
    print(markdown_table())
