"""The adversarial test's default-queue function (loaded via DEFAULT_FUNCTION_MODULES).

`adv_effect` records every execution as a file `<dir>/<job>-<attempt>-<execution>.json` before it
does anything else, so the test can tell which execution a recorded outcome came from: the
result names its execution, and that execution's attempt and machine must be the job's. It can
sleep (cancellable), fail the first attempts, fail permanently, snooze once, and merge a
user-shaped `result` into what it returns (as `echo` does), which is how a tenant tries to make
the machine treat keys it names as outputs.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from functions.handlers.base import HandlerContext, HandlerResult
from functions.handlers.default import register
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError, SnoozeJob


class EffectArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dir: str
    seconds: float = Field(0.0, ge=0, le=30)
    fail_first: int = Field(0, ge=0, le=10)
    permanent: bool = False
    snooze: bool = False
    data: Any = None  # anything, so unique keys over args have something to differ on
    result: dict[str, Any] | None = None  # merged into the returned result, user-shaped


def execution_path(directory: str | Path, job_id: int, attempt: int, execution: str) -> Path:
    return Path(directory) / f"{job_id}-{attempt}-{execution}.json"


@register("adv_effect", EffectArgs)
async def adv_effect(job: Job, ctx: HandlerContext) -> HandlerResult:
    args = EffectArgs.model_validate(job.args)
    execution = uuid.uuid4().hex
    record = {"job": job.id, "attempt": job.attempt, "machine": ctx.machine_id, "pid": os.getpid()}
    execution_path(args.dir, job.id, job.attempt, execution).write_text(json.dumps(record))
    if args.snooze and not job.meta.get("snoozed"):
        raise SnoozeJob(0.3)
    if args.seconds:
        try:
            await asyncio.wait_for(ctx.cancelled.wait(), timeout=args.seconds)
        except TimeoutError:
            pass
        else:
            raise asyncio.CancelledError
    if args.permanent:
        raise PermanentJobError("designed to fail", kind="designed-permanent")
    if job.attempt <= args.fail_first:
        raise RetryableJobError(f"designed failure of attempt {job.attempt}", retry_after_seconds=0.2)
    return {**(args.result or {}), "execution": execution, "attempt": job.attempt, "machine": ctx.machine_id}
