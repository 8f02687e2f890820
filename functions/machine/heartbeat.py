"""Heartbeat: refresh every held claim (and the machine's own row), notice claims that are gone,
and call for self-fencing once the database has been out of reach for too long."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from shared.db import job_store, transitions
from shared.db.pool import Pool

from .held import HeldJob
from .reach import DatabaseReach

logger = logging.getLogger("functions.machine")


class Heartbeat:
    def __init__(
        self,
        *,
        pool: Pool,
        machine_id: str,
        interval_seconds: float,
        reach: DatabaseReach,
        held: Mapping[int, HeldJob],
        on_unreachable: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.machine_id = machine_id
        self.interval_seconds = interval_seconds
        self.reach = reach
        self.held = held
        self.on_unreachable = on_unreachable

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_seconds)
            await self.beat()

    async def beat(self) -> None:
        """One heartbeat: held claims still ours are refreshed, lost ones are stopped."""
        beating = [h for h in self.held.values() if h.publishable and not h.completing]
        fences = [h.fence for h in beating]
        progress = [h.ctx.unsent_progress() for h in beating]
        try:
            # Bounded: a pool waiting for a connection that never comes must not hold the
            # heartbeat (and the self-fence check below) hostage.
            async with asyncio.timeout(max(2 * self.interval_seconds, 1.0)):
                async with self.pool.connection() as conn:
                    # The machine row's heartbeat tells the scaler this machine can still take work.
                    await job_store.machine_seen(conn, self.machine_id)
                    still = await transitions.heartbeat(conn, held=fences, progress=progress)
        except Exception:
            logger.warning("heartbeat failed", exc_info=True)
            for unsent, report in zip(beating, progress, strict=True):
                if report is not None and not unsent.ctx.progress_unsent:
                    unsent.ctx.progress_unsent = True  # not written: the next beat tries again
            if self.held and self.reach.past_deadline():
                self.on_unreachable()
            return
        self.reach.reached()
        for fence in fences:
            entry = self.held.get(fence.job_id)
            # A job whose result went to the batch meanwhile is the fenced write's business.
            if fence.job_id not in still and entry is not None and not entry.completing:
                # Cancelled or rescued: stop the work now and publish nothing.
                entry.lost = True
                entry.stop()
