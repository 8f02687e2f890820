"""The scheduler: a duty of the leader that inserts each due occurrence of every schedule once.

Exactly once, whoever leads: an occurrence's job is inserted in the transaction that records the
occurrence (schedule_runs, unique per schedule and occurrence time) and moves the schedule past
it only if nobody has moved it since it was read. A leader that lost its lease while it worked
(frozen, then thawed) finds the occurrence taken and inserts nothing. `clock` is injected so tests
decide what "now" is instead of waiting for minutes to pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from shared import schedules
from shared.db import job_store, schedule_store
from shared.db.models import NewJob
from shared.db.pool import Pool
from shared.db.schedule_store import Schedule

logger = logging.getLogger("functions.dispatcher.scheduler")

BATCH = 100  # schedules handled per run; the rest wait for the next run


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Scheduler:
    pool: Pool
    grace_seconds: float
    clock: Callable[[], datetime] = field(default=utc_now)

    async def run_once(self) -> int:
        """Handle every schedule that came due; returns how many jobs were inserted."""
        now = self.clock()
        async with self.pool.connection() as conn:
            due = await schedule_store.due_schedules(conn, now=now, limit=BATCH)
        inserted = 0
        for schedule in due:
            try:
                inserted += await self._handle(schedule, now)
            except psycopg.OperationalError:
                raise  # the database is away: the duty backs off (duties.py)
            except (schedules.ScheduleError, psycopg.Error):
                # One schedule that cannot be evaluated or whose job the database refuses must not
                # hold up the others (it comes first every time): logged, the others go on.
                logger.warning("schedule not handled", extra={"scheduleId": str(schedule.id)}, exc_info=True)
        return inserted

    async def _handle(self, schedule: Schedule, now: datetime) -> int:
        plan = schedules.plan(
            schedule.cron,
            schedule.time_zone,
            next_run_at=schedule.next_run_at,
            now=now,
            misfire=schedule.misfire,  # type: ignore[arg-type]
            grace_seconds=self.grace_seconds,
        )
        async with self.pool.connection() as conn, conn.transaction():
            if not await schedule_store.advance(conn, schedule, next_run_at=plan.next_run_at, fired_at=plan.fire):
                return 0  # another leader handled it first
            if plan.fire is None:
                logger.info(
                    "schedule occurrences skipped",
                    extra={"scheduleId": str(schedule.id), "from": schedule.next_run_at.isoformat()},
                )
                return 0
            if not await schedule_store.claim_occurrence(conn, schedule.id, plan.fire):
                return 0
            job = await job_store.insert_job(conn, _occurrence_job(schedule, plan.fire))
            await schedule_store.record_occurrence_job(conn, schedule.id, plan.fire, job.id)
        logger.info("schedule fired", extra={"scheduleId": str(schedule.id), "jobId": job.id})
        return 1


def _occurrence_job(schedule: Schedule, occurrence: datetime) -> NewJob:
    meta = {**schedule.meta, "scheduleId": str(schedule.id), "occurrenceAt": occurrence.isoformat()}
    return NewJob(
        queue=schedule.queue,
        worker=schedule.worker,
        tenant_id=schedule.tenant_id,
        args=schedule.args,
        meta=meta,
        tags=list(schedule.tags),
        priority=schedule.priority,
        max_attempts=schedule.max_attempts,
    )
