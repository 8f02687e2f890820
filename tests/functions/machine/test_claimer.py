"""The claim loop: the launching job first, never more than MACHINE_MAX_JOBS, exit when idle."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

from functions.handlers.base import HandlerContext
from functions.machine import EXIT_OK, Machine, MachineConfig
from shared.db import job_store
from shared.db.models import Job, JobState, NewJob
from shared.db.pool import connect
from tests.functions.machine.conftest import MACHINE, row


def echo() -> ModuleType:
    module = ModuleType("echo_handler")

    async def run(job: Job, ctx: HandlerContext) -> dict[str, Any]:
        return {"id": job.id}

    module.run = run  # type: ignore[attr-defined]
    return module


async def test_the_launching_job_goes_first_and_max_jobs_bounds_the_run(settings, pool):
    conn = await connect(settings.database_url)
    async with conn:
        jobs = await job_store.insert_jobs(
            conn, [NewJob(queue="default", worker="w", tenant_id="t1", args={"n": n}) for n in range(3)]
        )
    last = jobs[-1].id
    config = MachineConfig(
        queue="default", machine_id=MACHINE, first_job_id=last, max_jobs=2, idle_seconds=0.5, concurrency=1
    )
    machine = Machine(settings=settings, config=config, handler=echo(), pool=pool)

    assert await asyncio.wait_for(machine.run(), 60) == EXIT_OK

    states = [(await row(settings, job.id)).state for job in jobs]
    assert states[-1] == JobState.COMPLETED, "the job that caused the launch is claimed first"
    assert sorted(states) == sorted([JobState.AVAILABLE, JobState.COMPLETED, JobState.COMPLETED])
    assert machine.started_jobs == 2


async def test_an_idle_machine_exits(settings, pool):
    config = MachineConfig(
        queue="default", machine_id=MACHINE, first_job_id=None, max_jobs=10, idle_seconds=0.3, concurrency=2
    )
    machine = Machine(settings=settings, config=config, handler=echo(), pool=pool)
    assert await asyncio.wait_for(machine.run(), 30) == EXIT_OK
    assert machine.started_jobs == 0
