"""Default-queue functions for the engine tests (loaded via DEFAULT_FUNCTION_MODULES)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from functions.handlers.base import HandlerContext, HandlerResult
from functions.handlers.default import register
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError, SnoozeJob


class FlakyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    succeed_on: int = 3


@register("flaky", FlakyArgs)
async def flaky(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Fails until attempt `succeed_on`, retrying quickly."""
    args = FlakyArgs.model_validate(job.args)
    if job.attempt < args.succeed_on:
        raise RetryableJobError(f"failing attempt {job.attempt}", retry_after_seconds=0.1)
    return {"succeededOn": job.attempt}


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register("always_fail", Empty)
async def always_fail(job: Job, ctx: HandlerContext) -> HandlerResult:
    raise RetryableJobError(f"attempt {job.attempt} failed", retry_after_seconds=0.1)


@register("permanent_fail", Empty)
async def permanent_fail(job: Job, ctx: HandlerContext) -> HandlerResult:
    raise PermanentJobError("this can never work", kind="bad-input")


@register("snooze_once", Empty)
async def snooze_once(job: Job, ctx: HandlerContext) -> HandlerResult:
    if not job.meta.get("snoozed"):
        raise SnoozeJob(0.2)
    return {"attempt": job.attempt, "snoozed": job.meta["snoozed"]}


class MarkerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    marker_dir: str
    seconds: float = 0.0


@register("record_run", MarkerArgs)
async def record_run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Writes one marker file per execution (to count runs), then sleeps `seconds`."""
    import asyncio

    marker = Path(MarkerArgs.model_validate(job.args).marker_dir) / f"{job.id}-{job.attempt}-{os.getpid()}"
    marker.write_text(ctx.machine_id)
    await asyncio.sleep(MarkerArgs.model_validate(job.args).seconds)
    return {"pid": os.getpid(), "attempt": job.attempt}


class SlowFirstArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 30.0


@register("slow_first", SlowFirstArgs)
async def slow_first(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Attempt 1 takes `seconds`; later attempts return at once (for kill/stall tests)."""
    import asyncio

    if job.attempt == 1:
        await asyncio.sleep(SlowFirstArgs.model_validate(job.args).seconds)
    return {"attempt": job.attempt, "machine": ctx.machine_id}


@register("slow_once", MarkerArgs)
async def slow_once(job: Job, ctx: HandlerContext) -> HandlerResult:
    """The first execution of this job sleeps `seconds`; any later one returns at once."""
    import asyncio

    args = MarkerArgs.model_validate(job.args)
    marker = Path(args.marker_dir) / f"slow-once-{job.id}"
    if not marker.exists():
        marker.write_text(ctx.machine_id)
        await asyncio.sleep(args.seconds)
    return {"attempt": job.attempt, "machine": ctx.machine_id}


class OverrunArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    marker_dir: str
    seconds: float = 3.0


def _overrun(marker: Path, seconds: float) -> None:
    import time

    time.sleep(seconds)  # blocking work in a thread: cancelling the task cannot stop it
    marker.write_text("the thread kept running after its attempt was given up")


@register("thread_overrun", OverrunArgs)
async def thread_overrun(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Blocking work in a worker thread that outlasts the function's timeout, then writes a marker."""
    import asyncio

    args = OverrunArgs.model_validate(job.args)
    await asyncio.to_thread(_overrun, Path(args.marker_dir) / f"overrun-{job.id}-{job.attempt}", args.seconds)
    return {"finished": True}


class StoreArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = 0.0  # how long attempt 1 sleeps after storing its output


@register("store_output", StoreArgs)
async def store_output(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Stores `out.txt` holding its attempt number, then (attempt 1 only) sleeps `seconds`."""
    import asyncio

    await asyncio.to_thread(ctx.outputs.put_bytes, "out.txt", f"attempt {job.attempt}".encode(), "text/plain")
    if job.attempt == 1:
        await asyncio.sleep(StoreArgs.model_validate(job.args).seconds)
    return {"attempt": job.attempt, "machine": ctx.machine_id}


@register("unstorable_result", Empty)
async def unstorable_result(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Returns a float Postgres would store as a numeric that no reader could load back."""
    return {"big": float(2**64)}


class ProgressArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    total: int
    release: str  # a file: the job finishes once it exists


@register("report_progress", ProgressArgs)
async def report_progress(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Reports progress once per item (`total` reports in a row), then waits for `release`."""
    import asyncio

    args = ProgressArgs.model_validate(job.args)
    for done in range(1, args.total + 1):
        ctx.progress(done, args.total, f"item {done}")
    while not Path(args.release).exists():
        await asyncio.sleep(0.05)
    return {"items": args.total}


@register("fail_once", MarkerArgs)
async def fail_once(job: Job, ctx: HandlerContext) -> HandlerResult:
    """The first execution of this job fails for good (kind `first-run`); any later one succeeds."""
    marker = Path(MarkerArgs.model_validate(job.args).marker_dir) / f"fail-once-{job.id}"
    if not marker.exists():
        marker.write_text(ctx.machine_id)
        raise PermanentJobError("the first run always fails", kind="first-run")
    return {"succeeded": True, "attempt": job.attempt}
