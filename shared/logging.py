"""JSON log lines with the ids of the request, job and machine they belong to.

Context (requestId, jobId, queue, worker, tenantId, machineId, attempt) lives in a contextvar,
so every line logged while handling a request or a job carries it without passing it around.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})  # noqa: B039


def current_context() -> dict[str, Any]:
    return dict(_context.get())


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Add `values` to every log line emitted inside the block (None values are left out)."""
    token = _context.set({**_context.get(), **{k: v for k, v in values.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind_context(**values: Any) -> None:
    """Add `values` to the context for the rest of this task (e.g. a machine's own id)."""
    _context.set({**_context.get(), **{k: v for k, v in values.items() if v is not None}})


# Characters some line readers take for a line break (JavaScript, str.splitlines): escaped, so
# a value a tenant chose cannot start what looks like another log line. orjson escapes the rest.
_LINE_BREAKS = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x2028, 0x2029)}

# A record's own attributes; anything else on it came from `extra` or the log context.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, service, then the record's extra
    fields (context included), then the traceback as `exc_info`.

    The same lines python-json-logger's JsonFormatter wrote, at a third of its cost per line
    (57 -> 17 µs measured here): a busy machine writes two lines per job, and that formatter was
    the largest share of a no-op job's time.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging.Formatter's own text (local time, `2026-01-02 03:04:05,678`), with the part up to
        the second formatted once a second rather than once a line: a strftime per line was over a
        third of the formatter's time (3.6 -> 2.5 us a line; the API writes one per request)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached_second, text = self._second
        if second != cached_second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        msec_format = self.default_msec_format
        return msec_format % (text, record.msecs) if msec_format else text

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        try:
            text = orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson refuses outright (an int beyond 64 bits): the slow way
            return json.dumps(line, default=str)  # ASCII only
        return text if text.isascii() else text.translate(_LINE_BREAKS)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def json_handler(stream: IO[str], *, service: str) -> logging.Handler:
    """A handler writing one JSON object per line to `stream`, with the log context in it."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter(service))
    handler.addFilter(_ContextFilter())
    return handler


def configure_logging(level: str = "info", *, service: str) -> None:
    """Send JSON lines to stdout for the whole process."""
    handler = json_handler(sys.stdout, service=service)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore", "fontTools", "weasyprint"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # uvicorn installs its own plain-text handlers; send its lines through ours as JSON instead.
    # Its access log repeats our `http:request` line (without the ids), so only its errors stay.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
