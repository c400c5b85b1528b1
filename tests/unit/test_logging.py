"""Logs never carry an API key, library lines are JSON like ours, and repeats are rate-limited."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import structlog

from shared.runtime.logging import configure_logging, flush_logs, redact

KEY = "mibo_" + "Ab3" * 12 + "Wxyz"
MASKED = "mibo_...Wxyz"


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the previous logging set-up is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("json", "info", service="test", stream=stream, repeat_window=0.3)
    yield stream
    flush_logs()
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_redact_masks_keys_wherever_they_are() -> None:
    assert redact(f"bad key {KEY}!") == f"bad key {MASKED}!"
    assert redact(KEY + "," + KEY) == MASKED + "," + MASKED
    # key characters split by control characters, raw or escaped as a repr or JSON writes them
    assert redact(KEY[:9] + "\x01" + KEY[9:]) == MASKED
    assert redact(repr((KEY[:9] + "\x7f" + KEY[9:]).encode())) == f"b'{MASKED}'"
    assert redact(json.dumps(KEY[:9] + "\x00" + KEY[9:])) == f'"{MASKED}"'
    assert redact("mibo_" + "\\\\x01" + KEY[5:]) == MASKED
    # a fragment of a key shows nothing of it; short words after the prefix are not keys
    assert redact("mibo_Ab3Ab3Ab3Ab3...") == "mibo_......"
    assert redact("mibo_abc and mibo-ingest") == "mibo_abc and mibo-ingest"


def test_structlog_events_are_redacted_everywhere(out: io.StringIO) -> None:
    structlog.get_logger("ingest_api.test").info(
        "auth failed", presented=KEY, headers={"x-api-key": KEY}, raw=KEY.encode(), many=[KEY]
    )
    (record,) = lines(out)
    assert KEY not in out.getvalue()
    assert record["presented"] == MASKED and record["headers"] == {"x-api-key": MASKED}
    assert record["raw"] == f"b'{MASKED}'" and record["many"] == [MASKED]
    assert record["service"] == "test" and record["level"] == "info" and record["logger"] == "ingest_api.test"


def test_stdlib_loggers_write_json_lines_like_ours(out: io.StringIO) -> None:
    kafka = logging.getLogger("aiokafka.conn")
    kafka.info("library info lines stay below the default level %s", KEY)
    kafka.warning("Unable connect to %s with key %s", "node 1", KEY, extra={"header": f"x-api-key: {KEY}"})
    (record,) = lines(out)
    assert record["event"] == f"Unable connect to node 1 with key {MASKED}"
    assert record["header"] == f"x-api-key: {MASKED}"
    assert record["level"] == "warning" and record["logger"] == "aiokafka.conn"
    assert record["service"] == "test" and "timestamp" in record
    assert KEY not in out.getvalue()


def test_exceptions_and_tracebacks_are_redacted(out: io.StringIO) -> None:
    try:
        raise ValueError(f"refused header x-api-key: {KEY}")
    except ValueError:
        structlog.get_logger("ingest_api.test").exception("request failed")
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    ours, aiohttp_line = lines(out)
    for record in (ours, aiohttp_line):
        assert "Traceback" in str(record["exception"]) and MASKED in str(record["exception"])
    assert aiohttp_line["event"] == "Error handling request from 127.0.0.1"
    assert KEY not in out.getvalue()


def test_python_warnings_and_uncaught_exceptions_are_logged_redacted() -> None:
    code = (
        "import warnings; from shared.runtime.logging import configure_logging\n"
        "configure_logging('json', 'info', service='t')\n"
        f"warnings.warn('deprecated {KEY}')\n"
        f"raise RuntimeError('crashed holding {KEY}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [r["logger"] for r in records] == ["py.warnings", "uncaught"], done.stderr
    assert KEY not in done.stderr and MASKED in records[1]["exception"]


def test_repeated_warnings_are_rate_limited(out: io.StringIO) -> None:
    kafka = logging.getLogger("aiokafka.conn")
    ours = structlog.get_logger("router_worker.test")
    for i in range(200):
        kafka.error("Unable connect to node with id %s: %s", 1, f"attempt {i}")
        ours.warning("kafka not reachable yet; retrying", attempt=i)
        structlog.get_logger("router_worker.test").info("routed", n=i)  # info is never limited
    first = lines(out)
    assert sum(1 for r in first if r["event"] == "routed") == 200
    limited = [r for r in first if r["event"] != "routed"]
    assert [r.get("repeated") for r in limited] == [None, None]
    time.sleep(0.9)  # the window closes: one line each with the count (written by the sweeper)
    summaries = [r for r in lines(out) if "repeated" in r]
    assert sorted((r["logger"], r["repeated"]) for r in summaries) == [
        ("aiokafka.conn", 199),
        ("router_worker.test", 199),
    ]
    by_logger = {r["logger"]: r for r in summaries}
    assert by_logger["aiokafka.conn"]["event"] == "Unable connect to node with id 1: attempt 199"
    assert by_logger["router_worker.test"]["attempt"] == 199
    # a different message, or the same one after the quiet window, passes at once
    kafka.error("another problem")
    time.sleep(0.8)
    kafka.error("Unable connect to node with id %s: %s", 1, "later")
    assert [r["event"] for r in lines(out)[-2:]] == [
        "another problem",
        "Unable connect to node with id 1: later",
    ]


def test_our_debug_lines_follow_log_level_while_libraries_stay_at_warning() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("json", "debug", stream=stream)
        structlog.get_logger("storage_worker.test_debug").debug("ours")
        logging.getLogger("psycopg.pool").info("theirs")
        assert [r["event"] for r in lines(stream)] == ["ours"]
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()


def test_a_line_logged_while_the_interpreter_exits_does_not_hang_it() -> None:
    """Libraries log from ``__del__`` at exit (aiokafka: "Unclosed AIOKafkaConsumer"); the rate
    limiter must not try to start its thread then (on 3.11 that waits forever)."""
    code = (
        "import logging; from shared.runtime.logging import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "class Leaky:\n"
        "    def __del__(self):\n"
        "        logging.getLogger('asyncio').error('Unclosed thing')\n"
        "leak = Leaky()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "Unclosed thing" in done.stderr, done.stderr


def test_a_line_logged_from_inside_the_rate_limiter_does_not_deadlock() -> None:
    """A line can be logged while the rate limiter holds its lock (a __del__ run by the garbage
    collector, a repr that logs): the process must go on."""
    code = (
        "import logging; from shared.runtime.logging import configure_logging, flush_logs\n"
        "configure_logging('json', 'info', repeat_window=60)\n"
        "class Noisy:\n"
        "    def __str__(self):\n"
        "        logging.getLogger('inner').warning('logged while formatting')\n"
        "        return 'noisy'\n"
        "for _ in range(2):\n"
        "    logging.getLogger('outer').warning('value %s', Noisy())\n"
        "flush_logs()  # closes the window: formats the held-back record under the lock\n"
        "print('done')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr


def test_the_handler_writes_to_stderr_as_it_is_now(capsys: pytest.CaptureFixture[str]) -> None:
    """Set up while stderr was a capture that is gone by now, logging still writes somewhere open."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("json", "info")
        logging.getLogger("psycopg.pool").warning("first")
        assert "first" in capsys.readouterr().err
        with capsys.disabled():  # another stderr now
            logging.getLogger("psycopg.pool").warning("second")
        logging.getLogger("psycopg.pool").warning("third")
        assert "third" in capsys.readouterr().err
    finally:
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)
        structlog.reset_defaults()
