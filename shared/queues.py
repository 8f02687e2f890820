"""The queues this service runs: one function (handler module) per queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSpec:
    """What runs on a queue: its handler module, worker name and retry budget."""

    name: str
    worker: str  # the worker name stored on job rows ("" on `default`: the function name is used)
    handler_module: str
    max_attempts: int


QUEUES: Final[dict[str, QueueSpec]] = {
    spec.name: spec
    for spec in (
        QueueSpec(name="images", worker="ProcessImage", handler_module="functions.handlers.images", max_attempts=5),
        QueueSpec(
            name="documents", worker="RenderDocument", handler_module="functions.handlers.documents", max_attempts=3
        ),
        QueueSpec(name="emails", worker="SendEmail", handler_module="functions.handlers.emails", max_attempts=5),
        QueueSpec(
            name="webhooks", worker="DeliverWebhook", handler_module="functions.handlers.webhooks", max_attempts=8
        ),
        QueueSpec(name="exports", worker="ExportData", handler_module="functions.handlers.exports", max_attempts=3),
        QueueSpec(name="default", worker="", handler_module="functions.handlers.default", max_attempts=5),
    )
}


def queue_spec(name: str) -> QueueSpec:
    """The spec of queue `name`. Raises KeyError for an unknown queue."""
    return QUEUES[name]
