"""The recorder: fenced, batched completions; failures, snoozes and hand-backs; withdrawal of
what a claim stored when it can never be recorded."""

from __future__ import annotations

import asyncio
from typing import Any

from functions.machine.reach import DatabaseReach
from functions.machine.recorder import Recorder
from shared.db import transitions
from shared.db.job_store import JobFilter
from shared.db.models import JobState
from shared.db.pool import Pool, connect
from shared.storage import Storage
from tests.functions.machine.conftest import MACHINE, claimed_jobs, hold, row


def recorder(pool: Pool, reach: DatabaseReach | None = None) -> Recorder:
    return Recorder(
        pool=pool, machine_id=MACHINE, reach=reach or DatabaseReach(self_fence_after=60), backoff=lambda attempt: 0.0
    )


async def test_completions_finished_together_are_recorded_together(settings, pool):
    rec = recorder(pool)
    running = asyncio.create_task(rec.run())
    jobs = await claimed_jobs(settings, 5)
    try:
        answers = await asyncio.gather(*(rec.complete(hold(settings, j), {"n": j.id}) for j in jobs))
    finally:
        running.cancel()
    assert answers == [True] * 5
    for job in jobs:
        stored = await row(settings, job.id)
        assert (stored.state, stored.result) == (JobState.COMPLETED, {"n": job.id})
    [(jobs_run,)] = await _sql(settings, "SELECT coalesce(sum(jobs_run), 0) FROM machines")
    assert jobs_run == 0  # no machine row in this test: the count goes nowhere, and nothing fails


async def test_a_lost_claim_answers_false_and_withdraws_what_it_stored(settings, pool):
    Storage(settings).ensure_bucket()
    rec = recorder(pool)
    running = asyncio.create_task(rec.run())
    [job] = await claimed_jobs(settings)
    held = hold(settings, job)
    output = await asyncio.to_thread(held.ctx.outputs.put_bytes, "a.txt", b"a", "text/plain")
    conn = await connect(settings.database_url)
    async with conn:
        await transitions.cancel(conn, JobFilter(tenant_id=None, ids=[job.id]))
    try:
        assert await rec.complete(held, {"ignored": True}) is False
    finally:
        running.cancel()
    assert (await row(settings, job.id)).state == JobState.CANCELLED
    assert _keys(settings, output["key"]) == []


async def test_an_unreachable_database_past_the_deadline_answers_unknown_and_keeps_outputs(settings, pool):
    Storage(settings).ensure_bucket()
    reach = DatabaseReach(self_fence_after=0.5)
    rec = recorder(pool, reach)
    [job] = await claimed_jobs(settings)
    held = hold(settings, job)
    output = await asyncio.to_thread(held.ctx.outputs.put_bytes, "a.txt", b"a", "text/plain")
    await pool.close()  # every checkout now fails
    running = asyncio.create_task(rec.run())
    try:
        assert await asyncio.wait_for(rec.complete(held, {}), 30) is None
    finally:
        running.cancel()
    assert (await row(settings, job.id)).state == JobState.EXECUTING
    assert _keys(settings, output["key"]) == [output["key"]], "a completion that may have landed keeps its objects"


async def test_failures_retry_or_discard_and_withdraw(settings, pool):
    Storage(settings).ensure_bucket()
    rec = recorder(pool)
    retried, discarded = await claimed_jobs(settings, 2, max_attempts=2)
    held = hold(settings, retried)
    output = await asyncio.to_thread(held.ctx.outputs.put_bytes, "a.txt", b"a", "text/plain")
    await rec.fail(held, kind="error", message="boom")
    await rec.fail(hold(settings, discarded), kind="bad", message="never", permanent=True)
    after = await row(settings, retried.id)
    assert after.state == JobState.RETRYABLE and after.errors[-1]["kind"] == "error"
    assert (await row(settings, discarded.id)).state == JobState.DISCARDED
    assert _keys(settings, output["key"]) == []


async def test_snooze_and_hand_back_give_the_attempt_back(settings, pool):
    rec = recorder(pool)
    snoozed, handed = await claimed_jobs(settings, 2)
    await rec.snooze(hold(settings, snoozed), seconds=60)
    await rec.hand_back(hold(settings, handed))
    assert ((await row(settings, snoozed.id)).state, (await row(settings, snoozed.id)).attempt) == (
        JobState.SCHEDULED,
        0,
    )
    assert ((await row(settings, handed.id)).state, (await row(settings, handed.id)).attempt) == (
        JobState.AVAILABLE,
        0,
    )


async def _sql(settings: Any, query: str) -> list[tuple[Any, ...]]:
    conn = await connect(settings.database_url)
    async with conn:
        cur = await conn.execute(query)
        return [tuple(r.values()) for r in await cur.fetchall()]


def _keys(settings: Any, key: str) -> list[str]:
    bucket = Storage(settings)
    listed = bucket.client.list_objects_v2(Bucket=bucket.bucket, Prefix=key)
    return [item["Key"] for item in listed.get("Contents", [])]
