"""Logs never carry an API key: the redaction processor catches key-shaped strings anywhere."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from shared.runtime.logging import configure_logging, redact_keys

KEY = "mibo_" + "Ab3" * 12


def test_redacts_nested_values() -> None:
    event = {"event": f"bad key {KEY}", "headers": {"x-api-key": KEY}, "list": [KEY, 3]}
    out = redact_keys(None, "info", event)
    assert KEY not in json.dumps(out)
    assert out["headers"]["x-api-key"] == "mibo_[REDACTED]"


def test_configured_json_logger_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info", service="test")
    structlog.get_logger().info("auth failed", presented=KEY)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["presented"] == "mibo_[REDACTED]" and record["service"] == "test"
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_stdlib_records_are_redacted_too() -> None:
    configure_logging("json", "info")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    from shared.runtime.logging import RedactingFilter

    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("aiohttp.test")
    logger.addHandler(handler)
    try:
        logger.warning("header was %s", KEY)
    finally:
        logger.removeHandler(handler)
    assert KEY not in stream.getvalue() and "mibo_[REDACTED]" in stream.getvalue()
    structlog.reset_defaults()
