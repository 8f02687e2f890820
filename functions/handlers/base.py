"""What every handler gets and returns.

A handler module exposes `async def run(job: Job, ctx: HandlerContext) -> dict` (the dict becomes
the job's `result`; files it wrote go in `result["outputs"]`). It may also expose
`backoff(attempt: int) -> float` (seconds before the next attempt) and `async def warm(ctx)`,
called once when the machine boots. It raises PermanentJobError for input that can never succeed,
RetryableJobError for passing failures, SnoozeJob to run later without using an attempt.
CPU-bound work runs in `asyncio.to_thread` so heartbeats keep flowing.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from shared.db.models import Job
from shared.queues import queue_spec
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.db.pool import Pool
    from shared.storage import Storage

HandlerResult = dict[str, Any]
RunFunction = Callable[[Job, "HandlerContext"], Awaitable[HandlerResult]]


@dataclass(kw_only=True)
class HandlerContext:
    """Everything a handler may use. Heavy clients are created on first use."""

    settings: Settings
    machine_id: str
    pool: Pool | None = None  # read-only dataset queries (exports); handlers never write jobs
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("functions.handler"))
    # Per-machine reusable things (SMTP connection, storage client), shared by every job's context.
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def storage(self) -> Storage:
        storage = self.resources.get("storage")
        if storage is None:
            from shared.storage import Storage

            storage = self.resources["storage"] = Storage(self.settings)
        return storage  # type: ignore[no-any-return]

    def for_job(self) -> HandlerContext:
        """A context for one job: same resources, its own cancellation event."""
        return HandlerContext(
            settings=self.settings,
            machine_id=self.machine_id,
            pool=self.pool,
            logger=self.logger,
            resources=self.resources,
        )


def load_handler(queue: str) -> ModuleType:
    """Import the handler module of `queue` (heavy libraries load only on machines that need them)."""
    return importlib.import_module(queue_spec(queue).handler_module)
