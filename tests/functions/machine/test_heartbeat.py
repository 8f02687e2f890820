"""The heartbeat: keeps held claims alive, stops lost ones, leaves recording ones alone, and calls
for self-fencing once the database has been away past the deadline."""

from __future__ import annotations

import asyncio
from datetime import datetime

from functions.machine.heartbeat import Heartbeat
from functions.machine.held import HeldJob
from functions.machine.reach import DatabaseReach
from shared.db import transitions
from shared.db.job_store import JobFilter
from shared.db.pool import Pool, connect
from tests.functions.machine.conftest import MACHINE, claimed_jobs, hold, row


def heartbeat(pool: Pool, held: dict[int, HeldJob], reach: DatabaseReach, fenced: list[bool]) -> Heartbeat:
    return Heartbeat(
        pool=pool,
        machine_id=MACHINE,
        interval_seconds=0.2,
        reach=reach,
        held=held,
        on_unreachable=lambda: fenced.append(True),
    )


async def _parked() -> None:
    await asyncio.sleep(3600)


async def test_held_claims_are_refreshed_and_lost_ones_stopped(settings, pool):
    kept, cancelled, recording = await claimed_jobs(settings, 3)
    held = {j.id: hold(settings, j) for j in (kept, cancelled, recording)}
    for entry in held.values():
        entry.task = asyncio.create_task(_parked())
    held[recording.id].completing = True
    conn = await connect(settings.database_url)
    async with conn:
        await transitions.cancel(conn, JobFilter(tenant_id=None, ids=[cancelled.id, recording.id]))
    before: datetime | None = (await row(settings, kept.id)).heartbeat_at
    fenced: list[bool] = []

    await heartbeat(pool, held, DatabaseReach(self_fence_after=60), fenced).beat()
    await asyncio.sleep(0)

    assert (await row(settings, kept.id)).heartbeat_at != before
    assert held[cancelled.id].lost and held[cancelled.id].ctx.cancelled.is_set()
    stopped = held[cancelled.id].task
    assert stopped is not None and stopped.cancelled()
    assert not held[recording.id].lost, "a job whose outcome is being recorded is the fenced write's business"
    assert not held[kept.id].lost and fenced == []
    for entry in held.values():
        assert entry.task is not None
        entry.task.cancel()


async def test_an_unreachable_database_past_the_deadline_calls_for_self_fencing(settings, pool):
    [job] = await claimed_jobs(settings)
    held = {job.id: hold(settings, job)}
    reach = DatabaseReach(self_fence_after=0.0)
    fenced: list[bool] = []
    await pool.close()

    await heartbeat(pool, held, reach, fenced).beat()

    assert fenced == [True]
    assert not held[job.id].lost, "unreachable is not lost: the machine decides what to do"
