"""A job a machine holds: its row as claimed, its fence, its context and its task."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from functions.handlers.base import HandlerContext
from shared.db.models import Fence, Job


@dataclass(slots=True)
class HeldJob:
    job: Job
    fence: Fence
    ctx: HandlerContext
    task: asyncio.Task[None] | None = None
    lost: bool = False  # the database says this claim is gone (cancelled or rescued)
    abandoned: bool = False  # this machine gave the claim up (self-fenced): publish nothing
    # Its outcome is being recorded: the heartbeat leaves it alone (the write may already have
    # made it final), and the fenced write alone says whether the claim was still ours.
    completing: bool = False

    @property
    def publishable(self) -> bool:
        return not (self.lost or self.abandoned)

    def stop(self) -> None:
        """Tell the handler to stop and cancel its task (unless its result is being recorded)."""
        self.ctx.cancelled.set()
        if self.task is not None and not self.completing:
            self.task.cancel()
