"""The claim loop: take jobs of the machine's queue while it has free slots, wake on NOTIFY (and
poll, as NOTIFY is not relied on), and end when the machine is idle, done or stopping."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from shared.db import transitions
from shared.db.models import Job
from shared.db.pool import connect
from shared.notify import JOBS_CHANNEL, listen

from .config import DB_RETRY_MAX_SECONDS
from .reach import UNREACHABLE

if TYPE_CHECKING:
    from .machine import Machine

logger = logging.getLogger("functions.machine")
_RATE_WAIT_SLACK = 0.002  # seconds after a rate window frees a start, so the claim finds it free


class ClaimLoop:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._rate_wait: float | None = None  # seconds until a full rate window frees a start

    async def run(self) -> None:
        m, cfg = self.machine, self.machine.config
        loop = asyncio.get_running_loop()
        prefer = cfg.first_job_id
        idle_since = loop.time()
        claim_delay = 0.0
        while True:
            can_claim = m.can_claim()
            free = min(cfg.concurrency - len(m.held), cfg.max_jobs - m.started_jobs)
            # While busy, claim in batches (half the slots) rather than one claim per finished job.
            batch = 1 if not m.held else max(1, min(cfg.concurrency // 2, cfg.max_jobs - m.started_jobs))
            claimed: list[Job] = []
            if can_claim and free >= batch:
                m.wake.clear()
                try:
                    async with m.pool.connection() as conn:
                        claimed = await transitions.claim(
                            conn, queue=cfg.queue, machine_id=cfg.machine_id, max_jobs=free, prefer_id=prefer
                        )
                        # Nothing came: when a rate limit held jobs back, come back as its window
                        # frees a start rather than a whole poll later.
                        self._rate_wait = (
                            None if claimed else await transitions.rate_wait_seconds(conn, queue=cfg.queue)
                        )
                except UNREACHABLE:
                    # A claim that failed claimed nothing (one statement); the jobs held keep running.
                    claim_delay = min(max(claim_delay * 2, 0.25), DB_RETRY_MAX_SECONDS)
                    logger.warning("claim failed; retrying in %.2fs", claim_delay, exc_info=True)
                    await self._wait_for_change(timeout=claim_delay)
                    continue
                claim_delay = 0.0
                m.reach.reached()
                prefer = None
                for job in claimed:
                    m.start(job)
            if m.held or claimed:
                idle_since = loop.time()
            elif not can_claim:
                return
            elif cfg.idle_seconds - (loop.time() - idle_since) <= 0:
                logger.info("machine idle, exiting")
                return
            if claimed and len(m.held) < cfg.concurrency:
                continue  # there may be more work right away
            await self._wait_for_change(timeout=self._wait_timeout(idle_since))

    def _wait_timeout(self, idle_since: float) -> float:
        m = self.machine
        # A start the rate limit frees is not announced by NOTIFY (a few ms late beats a second late).
        soonest = 1.0 if self._rate_wait is None else min(1.0, self._rate_wait + _RATE_WAIT_SLACK)
        if m.held:
            return min(max(m.settings.dispatcher_poll_seconds, 1.0), soonest)
        left = m.config.idle_seconds - (asyncio.get_running_loop().time() - idle_since)
        return max(0.0, min(left, soonest))  # poll at least every second: NOTIFY is not relied on

    async def _wait_for_change(self, *, timeout: float) -> None:
        m = self.machine
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(m.wake.wait()),
            asyncio.ensure_future(m.stopping.wait()),
        ]
        waiters += [held.task for held in m.held.values() if held.task is not None]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters[:2]:
            waiter.cancel()

    async def listen(self) -> None:
        """Wake the loop when jobs of this queue become available (reconnecting forever)."""
        m = self.machine
        while True:
            try:
                conn = await connect(m.settings.session_database_url)
                async with conn:
                    await listen(conn, JOBS_CHANNEL)
                    async for note in conn.notifies():
                        if note.payload == m.config.queue:
                            m.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("listener lost its connection; reconnecting")
                await asyncio.sleep(1.0)
