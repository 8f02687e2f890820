"""Stager, lifeline and pruner: the periodic duties of the leader, each a query or two."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.db import event_log, queue_rules, transitions
from shared.db.pool import Pool
from shared.db.sql import QUERIES
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

logger = logging.getLogger("functions.dispatcher.maintenance")


@dataclass
class Stager:
    """scheduled/retryable -> available once due (both states: a retry must actually run)."""

    pool: Pool

    async def run_once(self) -> int:
        async with self.pool.connection() as conn:
            staged = await transitions.stage_due(conn)
        if staged:
            logger.debug("jobs staged", extra={"count": staged})
        return staged


@dataclass
class Lifeline:
    """Rescue executing jobs whose heartbeat went stale or whose machine is gone."""

    pool: Pool
    rescue_after_seconds: float

    async def run_once(self) -> int:
        async with self.pool.connection() as conn:
            rescued = await transitions.rescue_stale(conn, rescue_after_seconds=self.rescue_after_seconds)
        for job in rescued:
            emit(EventName.JOB_RESCUE, jobId=job.id, queue=job.queue, nextState=job.state, machineId=job.attempted_by)
        return len(rescued)


@dataclass
class EventSender:
    """Send the logged job events (migrations/0012). The API processes' event hubs do it every few
    milliseconds; this keeps the log short while none runs."""

    pool: Pool
    batch: int = 5000
    most_batches: int = 20  # per run: the next run (a second later) goes on

    async def run_once(self) -> int:
        sent = 0
        async with self.pool.connection() as conn:
            for _ in range(self.most_batches):
                batch = await event_log.flush(conn, max_events=self.batch)
                sent += batch
                if batch < self.batch:
                    break
        return sent


@dataclass
class Pruner:
    """Delete final jobs and machines older than PRUNER_MAX_AGE, a bounded batch of each per run (and
    workflows and batches none of whose jobs is left, and old schedule occurrences)."""

    pool: Pool
    max_age_seconds: float
    machine_batch: int = 1000

    async def run_once(self) -> int:
        """Returns how many rows (jobs and machines) were deleted."""
        async with self.pool.connection() as conn:
            jobs = await transitions.prune(conn, max_age_seconds=self.max_age_seconds)
            cur = await conn.execute(
                QUERIES["prune_machines"], {"max_age_seconds": self.max_age_seconds, "limit": self.machine_batch}
            )
            machines = len(await cur.fetchall())
            # Fair-claim bookkeeping of tenants and rate keys that went quiet (not counted: no jobs).
            await queue_rules.prune_bookkeeping(conn)
            # Workflows and batches once none of their jobs is left, and old schedule occurrences.
            cur = await conn.execute(
                QUERIES["prune_groups"], {"max_age_seconds": self.max_age_seconds, "limit": self.machine_batch}
            )
            groups = await cur.fetchone()
        if jobs or machines:
            logger.info("pruned", extra={"jobs": jobs, "machines": machines})
        if groups and any(groups.values()):
            logger.info("pruned groups", extra=dict(groups))
        return jobs + machines
