"""Default-queue functions for the benchmark (machines load them with DEFAULT_FUNCTION_MODULES=bench.functions).

- `stamp` records the wall-clock time its handler started (pickup and cold-start latency);
- `mark` records one row per execution in `bench_runs` (the dispatcher bench counts runs per job);
- `noop` does nothing.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict

from functions.handlers.base import HandlerContext, HandlerResult
from functions.handlers.default import register
from shared.db.models import Job


class StampArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


@register("stamp", StampArgs)
async def stamp(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Append `<job id> <time.time() at handler start>` to the file at `path`."""
    started = time.time()
    fd = os.open(job.args["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job.id} {started:.6f}\n".encode())
    finally:
        os.close(fd)
    return {}


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register("noop", Empty)
async def noop(job: Job, ctx: HandlerContext) -> HandlerResult:
    return {}


@register("mark", Empty)
async def mark(job: Job, ctx: HandlerContext) -> HandlerResult:
    """One `bench_runs` row per execution (a separate autocommit write, so a run is counted even
    when its completion is later refused)."""
    assert ctx.pool is not None
    async with ctx.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO bench_runs (job_id, attempt, machine_id) VALUES (%s, %s, %s)",
            (job.id, job.attempt, ctx.machine_id),
        )
    return {}
