"""Logging for every service and the CLI: one handler, one format, one redaction step.

Our code logs through structlog; libraries (aiohttp, aiokafka, psycopg, asyncio) through the
standard ``logging`` module. Both end in the same ``logging`` handler, whose
``structlog.stdlib.ProcessorFormatter`` renders every line the same way — JSON in production,
console in dev — so a library's warning is a JSON line like ours:

    structlog event ─┐                                                  ┌─ JSON / console line
                     ├─▶ RepeatFilter ─▶ ProcessorFormatter ─▶ render ─▶ redact ─▶ stderr
    logging record ──┘   (rate limit)   (foreign_pre_chain: level, logger, extras, time)

- **Redaction** is the last step, on the rendered line: whatever a line carries — the event, its
  fields, ``record.args``, ``extra`` fields, an exception's message or traceback, a repr of
  bytes — anything shaped like an API key is masked to ``mibo_...`` + its last 4 characters
  before it is written. Key characters separated by control characters, raw or escaped as a repr
  or JSON writes them (a malformed header line quoted by aiohttp), are still one key.
- **Repeats** of one warning (same logger, level and event or message template) are rate
  limited: the first passes, later ones within ``REPEAT_WINDOW_SECONDS`` are counted, and one line
  with ``repeated: N`` closes each window — a broker outage is a few lines a window, not thousands.
- Uncaught exceptions (main thread, other threads) and Python warnings are logged the same way.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog

# What may sit between a key's characters in text that reached a log line: a control character
# (not a line break or tab), raw or escaped the way a bytes repr (``\x01``) or JSON (``\u0001``)
# writes it, possibly with its backslash escaped again.
_GAP = r"(?:[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\\+x(?:[01][0-9a-fA-F]|7[fF])|\\+u00(?:[01][0-9a-fA-F]|7[fF]))"
KEY_PATTERN = re.compile(rf"mibo_(?:[0-9A-Za-z]|{_GAP})+")
_GAPS = re.compile(_GAP)
MIN_KEY_CHARS = 4  # fewer characters after ``mibo_`` is a word, not a key (nor a piece of one)
WHOLE_KEY_CHARS = 32  # a whole key has at least this many; shorter is a fragment: nothing shown
REPEAT_WINDOW_SECONDS = 5.0
RATE_LIMITED_FROM = logging.WARNING


def _mask(match: re.Match[str]) -> str:
    chars = _GAPS.sub("", match.group(0)[len("mibo_") :])
    if len(chars) < MIN_KEY_CHARS:
        return match.group(0)
    return "mibo_..." + (chars[-4:] if len(chars) >= WHOLE_KEY_CHARS else "")


REDACTED = _mask  # the replacement for ``KEY_PATTERN.sub(REDACTED, text)``


def redact(text: str) -> str:
    """``text`` with every key-shaped run masked (``mibo_...`` + the last 4 characters)."""
    return KEY_PATTERN.sub(_mask, text) if "mibo_" in text else text


def redact_rendered(_: Any, __: str, line: Any) -> Any:
    """The redaction step: the last processor, after the renderer, so it sees the line as written."""
    return redact(line) if isinstance(line, str) else line


# --------------------------------------------------------------------------------------------------
# Rate limit of repeated warnings


@dataclass
class _Window:
    opened: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Lets the first of identical warnings through and counts the repeats of a window.

    Identical = same logger, level and template (structlog's event, or a ``logging`` call's
    unformatted message). A window with repeats is closed by one line (the last repeat, with
    ``repeated`` = how many were held back) and reopened, so a steady stream of one warning
    costs one line a window; a window that saw no repeat just ends. Windows are closed by the
    next record that passes through or, at the latest, by a background sweeper shortly after."""

    def __init__(self, handler: logging.Handler, window: float = REPEAT_WINDOW_SECONDS) -> None:
        super().__init__()
        self._handler = handler
        self.window = window
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # no thread and no held lock survive a fork

    def _reset(self) -> None:
        # Re-entrant: a line can be logged from inside the filter itself — a garbage-collected
        # object's __del__ (aiokafka's "Unclosed AIOKafkaProducer") runs at any allocation.
        self._lock = threading.RLock()
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._sweeper: threading.Thread | None = None
        self._next_sweep = math.inf

    @staticmethod
    def _template(record: logging.LogRecord) -> str:
        msg = record.msg
        if isinstance(msg, dict):  # from structlog (ProcessorFormatter.wrap_for_formatter)
            return str(msg.get("event", ""))
        return str(msg)

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now >= self._next_sweep:
            self.flush(now)
        if record.levelno < RATE_LIMITED_FROM:
            return True
        key = (record.name, record.levelno, self._template(record))
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window.suppressed += 1
                window.last = record
                return False
            self._windows[key] = _Window(now)
            self._next_sweep = min(self._next_sweep, now + self.window)
        self._ensure_sweeper()
        return True

    def flush(self, now: float | None = None, *, all_windows: bool = False) -> None:
        """Close every window that is over (or all of them): one ``repeated`` line each."""
        now = time.monotonic() if now is None else now
        closing: list[logging.LogRecord] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if not all_windows and now - window.opened < self.window:
                    continue
                if window.suppressed and window.last is not None:
                    closing.append(_summary(window.last, window.suppressed, self.window))
                    self._windows[key] = _Window(now)  # keep holding back a steady stream
                else:
                    del self._windows[key]
            opened = [w.opened for w in self._windows.values()]
            self._next_sweep = min(opened) + self.window if opened else math.inf
        for record in closing:
            self._handler.acquire()
            try:
                self._handler.emit(record)
            finally:
                self._handler.release()

    def _ensure_sweeper(self) -> None:
        """The background closer of windows, started on first need (and again in a forked child).
        Never while the interpreter shuts down: a thread started then never runs (3.11 waits for
        it forever), and ``flush_logs`` at exit closes the windows anyway."""
        if (self._sweeper is not None and self._sweeper.is_alive()) or sys.is_finalizing():
            return
        sweeper = threading.Thread(target=self._sweep, name="log-repeat-sweeper", daemon=True)
        try:
            sweeper.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return
        self._sweeper = sweeper

    def _sweep(self) -> None:
        while True:
            time.sleep(min(1.0, self.window / 2))
            try:
                self.flush()
            except Exception:  # a sweeper must never die of one bad record
                pass


def _summary(last: logging.LogRecord, count: int, window: float) -> logging.LogRecord:
    """The line that closes a window: the last held-back record, with how many were held back."""
    record = logging.makeLogRecord(last.__dict__)
    record.exc_info = record.exc_text = record.stack_info = None
    if isinstance(record.msg, dict):
        event = dict(record.msg)
        event.pop("exc_info", None)
        event.update(repeated=count, window_seconds=window)
        record.msg = event
    else:
        try:
            record.msg = record.getMessage()
        except Exception:  # arguments that do not fit the template: the template then
            record.msg = str(record.msg)
        record.args = ()
        record.repeated = count
        record.window_seconds = window
    return record


# --------------------------------------------------------------------------------------------------
# Set-up


def _stdlib_level(logger: logging.Logger, level: int) -> logging.Logger:
    """structlog's loggers log at the configured level even though libraries' stay at warnings."""
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return logger


class _LoggerFactory(structlog.stdlib.LoggerFactory):
    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def __call__(self, *args: Any) -> logging.Logger:
        return _stdlib_level(super().__call__(*args), self._level)


class _CurrentStderr:
    """``sys.stderr`` as it is when a line is written, not when logging was set up: code that
    swaps it for a while (a test capturing output, a CLI called in-process) never leaves the
    handler writing to a closed stream."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _ServiceName:
    """``service`` on every line, whichever thread or task wrote it."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self._service:
            event_dict.setdefault("service", self._service)
        return event_dict


def configure_logging(
    log_format: str = "auto",
    level: str = "info",
    service: str = "",
    *,
    stream: Any = None,
    repeat_window: float = REPEAT_WINDOW_SECONDS,
) -> logging.Handler:
    """Route structlog and the standard ``logging`` module through one redacting, rate-limited
    handler on ``stream`` (stderr). Our loggers log at ``level``; libraries at warnings and up
    (or ``level`` if it is higher). Returns the handler."""
    stream = _CurrentStderr() if stream is None else stream
    use_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    level_no = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _ServiceName(service),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,  # a traceback is text before it is redacted
            renderer,
            redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter(handler, repeat_window))
    root = logging.getLogger()
    for old in root.handlers:
        for filt in old.filters:
            if isinstance(filt, RepeatFilter):
                filt.flush(all_windows=True)
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.WARNING))
    logging.captureWarnings(True)
    atexit.unregister(flush_logs)
    atexit.register(flush_logs)  # the last windows' counts are written before the process ends

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_LoggerFactory(level_no),
        cache_logger_on_first_use=True,
    )
    _install_excepthooks()
    return handler


def flush_logs() -> None:
    """Close every rate-limit window and flush the handlers (before a process exits)."""
    for handler in logging.getLogger().handlers:
        for filt in handler.filters:
            if isinstance(filt, RepeatFilter):
                filt.flush(all_windows=True)
        handler.flush()


def _install_excepthooks() -> None:
    """Uncaught exceptions are logged (so redacted) instead of printed raw by the interpreter."""

    def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        logging.getLogger("uncaught").critical("uncaught exception", exc_info=(kind, exc, tb))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        logging.getLogger("uncaught").critical(
            "uncaught exception in thread %s",
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
