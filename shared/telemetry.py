"""One in-process event bus: `emit(EventName.JOB_COMPLETE, durationMs=12.5)`.

Event names are the old service's (Oban's telemetry names), so dashboards and alerts carry
over. Code that does something notable emits an event; it does not log it or count it itself.
Subscribers decide what an event means: the logger subscriber (always on) writes it as a JSON
log line, and the Prometheus subscriber in `shared/metrics.py` counts it.

Every event also sees the log context of the place that emitted it (requestId, jobId, queue,
worker, tenantId, machineId, attempt), so subscribers can label by queue without every call
site repeating it. A failing subscriber never breaks the code that emitted the event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shared.logging import current_context
from shared.vocabulary import Event as EventName

EVENTS: Final = frozenset(EventName)

# Log levels of events that deserve attention, or less; every other event is INFO. A job's start
# is DEBUG: its end line (job:complete, job:error, job:snooze...) carries the same context and the
# duration, and a second line per job was an eighth of a busy machine's CPU (measured with
# py-spy in `make bench`'s engine). LOG_LEVEL=debug brings it back; metrics count it regardless.
_LEVELS: Final[Mapping[str, int]] = {
    EventName.JOB_START: logging.DEBUG,
    EventName.JOB_ERROR: logging.WARNING,
    EventName.JOB_RESCUE: logging.WARNING,
    EventName.PLUGIN_ERROR: logging.ERROR,
}

logger = logging.getLogger("telemetry")

# LogRecord's own attributes cannot be passed in `extra`; such fields get a trailing underscore.
_RESERVED: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@dataclass(frozen=True, slots=True)
class Event:
    """One emitted event: its name, the fields given to `emit`, and the emitter's log context."""

    name: str
    fields: Mapping[str, Any]
    context: Mapping[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def get(self, key: str, default: Any = None) -> Any:
        """A field, falling back to the log context (`queue` usually comes from there)."""
        if key in self.fields:
            return self.fields[key]
        return self.context.get(key, default)


Subscriber = Callable[[Event], None]

_subscribers: list[Subscriber] = []
_lock = threading.Lock()


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Call `subscriber` for every event from now on; returns a function that unsubscribes it."""
    with _lock:
        _subscribers.append(subscriber)

    def unsubscribe() -> None:
        with _lock:
            if subscriber in _subscribers:
                _subscribers.remove(subscriber)

    return unsubscribe


def emit(name: str, /, **fields: Any) -> None:
    """Publish event `name` to every subscriber. Raises ValueError for an unknown event name."""
    if name not in EVENTS:
        raise ValueError(f"unknown telemetry event {name!r}")
    event = Event(name=name, fields=fields, context=current_context())
    with _lock:
        subscribers = list(_subscribers)
    for subscriber in subscribers:
        try:
            subscriber(event)
        except Exception:
            # Telemetry must never fail a job or a request; say so once per failure and go on.
            logger.warning("telemetry subscriber failed", extra={"event": name}, exc_info=True)


def log_event(event: Event) -> None:
    """The logger subscriber: one JSON line whose message is the event name."""
    level = _LEVELS.get(event.name, logging.INFO)
    if not logger.isEnabledFor(level):
        return
    # The context filter of shared.logging adds the emitter's context (jobId, requestId, ...).
    extra = {f"{key}_" if key in _RESERVED else key: value for key, value in event.fields.items()}
    logger.log(level, event.name, extra=extra)


subscribe(log_event)
