"""The telemetry bus: named events to every subscriber, with the emitter's log context."""

from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from shared import telemetry
from shared.logging import json_handler, log_context
from shared.metrics import EventMetrics


def test_unknown_event_names_are_refused():
    with pytest.raises(ValueError, match="job:finish"):
        telemetry.emit("job:finish")


def test_every_event_name_of_the_old_service_exists():
    old = {
        "job:start", "job:complete", "job:error", "job:cancel", "job:snooze", "job:rescue", "job:unique_conflict",
        "queue:start", "queue:stop", "queue:pause", "queue:resume", "plugin:start", "plugin:stop", "plugin:error",
    }  # fmt: skip
    assert old <= telemetry.EVENTS


def test_subscribers_get_fields_and_the_emitters_context_until_they_unsubscribe():
    seen: list[telemetry.Event] = []
    unsubscribe = telemetry.subscribe(seen.append)
    try:
        with log_context(requestId="r-1", jobId=7, queue="images"):
            telemetry.emit("job:complete", durationMs=12.5)
    finally:
        unsubscribe()
    telemetry.emit("job:start")
    [event] = seen
    assert event.name == "job:complete" and event.fields == {"durationMs": 12.5}
    assert event.get("queue") == "images" and event.get("jobId") == 7 and event.get("missing", "x") == "x"


def test_a_failing_subscriber_neither_breaks_the_emitter_nor_the_others():
    seen: list[str] = []

    def broken(event: telemetry.Event) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribers = [telemetry.subscribe(broken), telemetry.subscribe(lambda e: seen.append(e.name))]
    try:
        telemetry.emit("queue:pause", queue="emails")
    finally:
        for unsubscribe in unsubscribers:
            unsubscribe()
    assert seen == ["queue:pause"]


def test_the_logger_subscriber_writes_one_json_line_with_the_context():
    stream = io.StringIO()
    handler = json_handler(stream, service="test")
    logger = logging.getLogger("telemetry")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        with log_context(requestId="r-9", jobId=3, machineId="m-1", attempt=2):
            telemetry.emit("job:error", kind="timeout", error="took too long", name="shadows a LogRecord field")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    [line] = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert line["message"] == "job:error" and line["level"] == "WARNING" and line["service"] == "test"
    assert (line["requestId"], line["jobId"], line["machineId"], line["attempt"]) == ("r-9", 3, "m-1", 2)
    assert line["kind"] == "timeout" and line["name_"] == "shadows a LogRecord field"


def test_a_jobs_start_is_a_debug_line_and_its_end_an_info_line():
    stream = io.StringIO()
    handler = json_handler(stream, service="test")
    logger = logging.getLogger("telemetry")
    logger.addHandler(handler)
    previous = logger.level
    try:
        for level in (logging.INFO, logging.DEBUG):
            logger.setLevel(level)
            with log_context(jobId=level):
                telemetry.emit("job:start")
                telemetry.emit("job:complete", durationMs=1.0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    lines = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert [(line["jobId"], line["message"], line["level"]) for line in lines] == [
        (logging.INFO, "job:complete", "INFO"),
        (logging.DEBUG, "job:start", "DEBUG"),
        (logging.DEBUG, "job:complete", "INFO"),
    ]


def test_the_prometheus_subscriber_counts_events_by_name_and_queue():
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    telemetry.emit("queue:pause", queue="images")  # before start: not counted
    metrics.start()
    try:
        telemetry.emit("queue:pause", queue="images")
        with log_context(queue="webhooks"):
            telemetry.emit("job:start")
            telemetry.emit("job:start")
    finally:
        metrics.close()
    telemetry.emit("job:start", queue="webhooks")  # after close: not counted
    value = registry.get_sample_value
    assert value("telemetry_events_total", {"event": "queue:pause", "queue": "images"}) == 1
    assert value("telemetry_events_total", {"event": "job:start", "queue": "webhooks"}) == 2
