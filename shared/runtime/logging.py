"""structlog set-up shared by every service: JSON in production, console in dev.

A processor redacts anything shaped like an API key from every event, so a key that slips into a
log call (an exception message, a header dump) never reaches the output.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

KEY_PATTERN = re.compile(r"mibo_[0-9A-Za-z]{4,}")
REDACTED = "mibo_[REDACTED]"


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return KEY_PATTERN.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redact_keys(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace every `mibo_...` key-shaped string in the event."""
    for name, value in event_dict.items():
        event_dict[name] = _redact(value)
    return event_dict


class RedactingFilter(logging.Filter):
    """Standard-library logging filter (aiohttp, aiokafka): redacts key-shaped strings too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if KEY_PATTERN.search(message):
            record.msg, record.args = KEY_PATTERN.sub(REDACTED, message), None
        return True


def configure_logging(log_format: str = "auto", level: str = "info", service: str = "") -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
        redact_keys,
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiokafka, aiohttp) log through the standard library: keep their warnings.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.WARNING))
    if service:
        structlog.contextvars.bind_contextvars(service=service)
