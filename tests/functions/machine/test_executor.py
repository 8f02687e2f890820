"""The executor: every way a handler can end maps to one recorded outcome."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest

from functions.handlers.base import HandlerContext
from functions.machine.executor import Executor
from functions.machine.held import HeldJob
from functions.machine.reach import DatabaseReach
from functions.machine.recorder import Recorder
from shared.db.models import Job, JobState
from shared.errors import PermanentJobError, RetryableJobError, SnoozeJob
from tests.functions.machine.conftest import MACHINE, claimed_jobs, hold, row


class Boom(Exception):
    pass


async def _outcome(behaviour: Any) -> dict[str, Any]:
    if isinstance(behaviour, BaseException):
        raise behaviour
    if behaviour == "sleep":
        await asyncio.sleep(30)
    return behaviour  # type: ignore[no-any-return]


def handler(behaviour: Any) -> ModuleType:
    module = ModuleType("test_handler")

    async def run(job: Job, ctx: HandlerContext) -> dict[str, Any]:
        return await _outcome(behaviour)

    module.run = run  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("behaviour", "state", "kind"),
    [
        ({"ok": 1, "outputs": [{"key": "tenants/other/x"}]}, JobState.COMPLETED, None),
        (SnoozeJob(60), JobState.SCHEDULED, None),
        (PermanentJobError("never", kind="bad-input"), JobState.DISCARDED, "bad-input"),
        (RetryableJobError("later", kind="busy"), JobState.RETRYABLE, "busy"),
        (Boom("unexpected"), JobState.RETRYABLE, "error"),
        ("sleep", JobState.RETRYABLE, "timeout"),
        ({"big": 2.0**64}, JobState.DISCARDED, "unstorable-result"),
    ],
    ids=["result", "snooze", "permanent", "retryable", "exception", "timeout", "unstorable"],
)
async def test_each_way_a_handler_ends_is_recorded(settings, pool, behaviour, state, kind):
    recorder = Recorder(pool=pool, machine_id=MACHINE, reach=DatabaseReach(self_fence_after=60), backoff=lambda a: 0.0)
    batching = asyncio.create_task(recorder.run())
    timed_out: list[HeldJob] = []
    executor = Executor(
        handler=handler(behaviour),
        timeout_seconds=0.5,
        recorder=recorder,
        stopping=asyncio.Event(),
        on_timeout=timed_out.append,
    )
    [job] = await claimed_jobs(settings, max_attempts=3)
    held = hold(settings, job)
    try:
        await executor.execute(held)
    finally:
        batching.cancel()
    stored = await row(settings, job.id)
    assert stored.state == state
    assert (stored.errors[-1]["kind"] if stored.errors else None) == kind
    assert timed_out == ([held] if kind == "timeout" else [])
    if state == JobState.COMPLETED:
        assert stored.result == {"ok": 1}, "outputs a handler returns are not recorded"


async def test_a_cancelled_lost_job_publishes_nothing(settings, pool):
    recorder = Recorder(pool=pool, machine_id=MACHINE, reach=DatabaseReach(self_fence_after=60), backoff=lambda a: 0.0)
    executor = Executor(
        handler=handler("sleep"), timeout_seconds=30, recorder=recorder, stopping=asyncio.Event(), on_timeout=print
    )
    [job] = await claimed_jobs(settings)
    held = hold(settings, job)
    held.task = asyncio.create_task(executor.execute(held))
    await asyncio.sleep(0.2)
    held.lost = True
    held.stop()
    await held.task
    stored = await row(settings, job.id)
    assert stored.state == JobState.EXECUTING and stored.errors == [] and stored.result is None
