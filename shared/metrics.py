"""Prometheus metrics fed by the telemetry bus, and the bucket bounds every histogram shares.

Each process that serves /metrics owns a `CollectorRegistry` (never the global one, so several
apps can live in one test process). `EventMetrics` subscribes that registry to the bus and
counts every event this process emits, by event and queue. Function machines are separate,
short-lived processes nobody scrapes; what they do is read back from the database at scrape
time instead (functions/ingress/metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter

from shared import telemetry

# Seconds, from a fast claim to a long export.
DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


class EventMetrics:
    """`telemetry_events_total{event, queue}` for every event emitted in this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "telemetry_events",
            "Telemetry events emitted by this process (job:*, queue:*, plugin:*).",
            ["event", "queue"],
            registry=registry,
        )
        self._unsubscribe: Callable[[], None] | None = None

    def _count(self, event: telemetry.Event) -> None:
        self.events.labels(event=event.name, queue=str(event.get("queue") or "")).inc()

    def start(self) -> None:
        """Start counting events (the app starts)."""
        if self._unsubscribe is None:
            self._unsubscribe = telemetry.subscribe(self._count)

    def close(self) -> None:
        """Stop counting (the app shuts down)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
