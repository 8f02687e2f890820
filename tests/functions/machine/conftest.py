"""Machine parts against a real Postgres: jobs inserted and claimed as a machine would."""

from __future__ import annotations

from typing import Any

from functions.handlers.base import HandlerContext
from functions.machine.held import HeldJob
from shared.db import job_store, transitions
from shared.db.models import Fence, Job, NewJob
from shared.db.pool import connect
from shared.settings import Settings

MACHINE = "m-parts"


async def claimed_jobs(settings: Settings, count: int = 1, **fields: Any) -> list[Job]:
    """`count` jobs of the default queue, claimed by MACHINE."""
    conn = await connect(settings.database_url)
    async with conn:
        values: dict[str, Any] = {"queue": "default", "worker": "w", "tenant_id": "t1", "args": {}, **fields}
        await job_store.insert_jobs(conn, [NewJob(**values) for _ in range(count)])
        return await transitions.claim(conn, queue="default", machine_id=MACHINE, max_jobs=count)


def hold(settings: Settings, job: Job) -> HeldJob:
    ctx = HandlerContext(settings=settings, machine_id=MACHINE)
    return HeldJob(job=job, fence=Fence.of(job), ctx=ctx.for_job(job))


async def row(settings: Settings, job_id: int) -> Job:
    conn = await connect(settings.database_url)
    async with conn:
        job = await job_store.get_job(conn, job_id, tenant_id=None)
    assert job is not None
    return job
