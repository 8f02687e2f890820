"""JSON log lines with the ids of the request, job and machine they belong to.

Context (requestId, jobId, queue, worker, tenantId, machineId, attempt) lives in a contextvar,
so every line logged while handling a request or a job carries it without passing it around.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

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


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def json_handler(stream: IO[str], *, service: str) -> logging.Handler:
    """A handler writing one JSON object per line to `stream`, with the log context in it."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
            timestamp=False,
        )
    )
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
