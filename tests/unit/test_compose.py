"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the code instead."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.devstack.kafka_broker import kafka_version
from shared.runtime.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_compose_matches_services_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "ingest_api", "router_worker", "storage_worker"} <= set(services)
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version()}"
    assert services["postgres"]["image"].startswith("postgres:")
    known = {name for name, _, _ in settings_table()}
    for name in ("ingest_api", "router_worker", "storage_worker"):
        svc = services[name]
        assert svc["command"] == ["python", "-m", name]
        assert svc["build"] == "."
        env = svc["environment"]
        assert set(env) <= known, f"{name} sets unknown variables {set(env) - known}"
        assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "KEY_PEPPER"} <= set(env)
        assert "kafka" in svc["depends_on"]
    assert "healthcheck" in services["kafka"] and "healthcheck" in services["postgres"]
    assert (ROOT / "Dockerfile").exists()
