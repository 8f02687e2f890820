"""JSON log lines: one object per line with the context, for any value a caller may log."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime

from shared.logging import JsonLineFormatter, json_handler, log_context


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_json_with_its_context_whatever_it_carries() -> None:
    stream = io.StringIO()
    log = logging.getLogger("test.log_lines")
    log.handlers[:] = [json_handler(stream, service="test")]
    log.propagate = False
    log.setLevel(logging.INFO)
    job_key = uuid.uuid4()
    with log_context(jobId=7, queue="default", requestId=None):
        log.info("job:complete", extra={"durationMs": 1.5, "claim": job_key})
        log.info("odd values", extra={"huge": 2**70, "at": datetime(2026, 12, 3, tzinfo=UTC), "obj": object()})
        try:
            raise ZeroDivisionError("no")
        except ZeroDivisionError:
            log.exception("failed %s", "badly")
    first, odd, failed = _lines(stream)
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "test.log_lines",
        "message": "job:complete",
        "service": "test",
        "durationMs": 1.5,
        "claim": str(job_key),
        "jobId": 7,
        "queue": "default",
    }
    assert odd["huge"] == 2**70 and str(odd["at"]).startswith("2026-12-03") and "object" in str(odd["obj"])
    assert failed["message"] == "failed badly" and failed["level"] == "ERROR"
    assert "ZeroDivisionError: no" in str(failed["exc_info"]) and failed["jobId"] == 7


def test_a_value_cannot_break_a_line_for_any_line_reader() -> None:
    stream = io.StringIO()
    log = logging.getLogger("test.log_lines.breaks")
    log.handlers[:] = [json_handler(stream, service="test")]
    log.propagate = False
    sneaky = 'ok\n\r\u2028\u2029\u0085{"level": "ERROR", "message": "forged"} ä ☃'
    log.warning("handler raised", extra={"error": sneaky})
    text = stream.getvalue()
    assert len(text.splitlines()) == 1  # str.splitlines breaks on U+2028, U+2029 and U+0085 too
    (line,) = [json.loads(row) for row in text.splitlines()]
    assert line["error"] == sneaky and line["message"] == "handler raised"


def test_the_time_field_is_what_logging_writes_for_every_record() -> None:
    """The formatter writes the part of `time` up to the second once a second: every record still
    gets logging.Formatter's own text, within a second, across seconds and back in time."""
    formatter = JsonLineFormatter("test")
    reference = logging.Formatter()
    record = logging.LogRecord("test", logging.INFO, __file__, 1, "m", None, None)
    for created in [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0005, 1_700_000_001.5, 1_600_000_000.25, 0.5]:
        record.created = created
        record.msecs = float(int((created - int(created)) * 1000))
        assert formatter.formatTime(record) == reference.formatTime(record)
        assert json.loads(formatter.format(record))["time"] == reference.formatTime(record)
    assert formatter.formatTime(record, "%Y") == reference.formatTime(record, "%Y")
