"""State changes against a real Postgres: fencing, the transition guard, staging, claiming races."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared.db import job_store, transitions
from shared.db.job_store import JobFilter
from shared.db.models import ALLOWED, Fence, JobState, NewJob
from shared.db.pool import connect
from shared.db.sql import QUERIES, parse_queries
from shared.errors import LostJobError
from shared.schemas.common import UniqueOptions
from shared.unique import unique_key


def new(**overrides):
    values: dict[str, Any] = {"queue": "default", "worker": "echo", "tenant_id": "t1", "args": {"n": 1}}
    values.update(overrides)
    return NewJob(**values)


async def test_insert_claim_complete_and_fenced_writes(settings):
    conn = await connect(settings.database_url)
    async with conn:
        job = await job_store.insert_job(conn, new())
        assert job.state == JobState.AVAILABLE
        [claimed] = await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=5)
        assert (claimed.id, claimed.attempt, claimed.attempted_by) == (job.id, 1, "m1")
        with pytest.raises(LostJobError):
            await transitions.complete(conn, replace(Fence.of(claimed), claim_token=uuid.uuid4()), result={})
        await transitions.complete(conn, Fence.of(claimed), result={"ok": 1})
        done = await job_store.get_job(conn, job.id, tenant_id="t1")
        assert done is not None and done.state == JobState.COMPLETED and done.result == {"ok": 1}
        assert await job_store.get_job(conn, job.id, tenant_id="other-tenant") is None


async def test_database_refuses_transitions_outside_the_spec(settings):
    """Every pair of states not in ALLOWED is rejected by the database itself."""
    conn = await connect(settings.database_url)
    async with conn:
        job = await job_store.insert_job(conn, new())
        for target in JobState:
            if (JobState.AVAILABLE, target) in ALLOWED or target == JobState.AVAILABLE:
                continue
            with pytest.raises(psycopg.errors.CheckViolation):
                extra = {
                    JobState.COMPLETED: ", completed_at = now()",
                    JobState.DISCARDED: ", discarded_at = now()",
                    JobState.CANCELLED: "",
                }.get(target, "")
                if target == JobState.CANCELLED:
                    continue  # available -> cancelled is allowed
                await conn.execute(f"UPDATE jobs SET state = '{target.value}'{extra} WHERE id = %s", (job.id,))
        [claimed] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
        await transitions.complete(conn, Fence.of(claimed), result={})
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("UPDATE jobs SET state = 'available', completed_at = NULL WHERE id = %s", (job.id,))


async def test_failure_retries_then_discards_and_snooze_gives_the_attempt_back(settings):
    conn = await connect(settings.database_url)
    async with conn:
        job = await job_store.insert_job(conn, new(max_attempts=2))
        now = datetime.now(UTC)
        [j] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
        await transitions.snooze(conn, Fence.of(j), seconds=0)
        snoozed = await job_store.get_job(conn, job.id, tenant_id=None)
        assert snoozed is not None and snoozed.state == JobState.SCHEDULED and snoozed.attempt == 0
        assert snoozed.meta["snoozed"] == 1
        assert await transitions.stage_due(conn) == 1
        [j] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
        assert j.attempt == 1
        decision = transitions.after_failure(j, permanent=False, backoff_seconds=0, now=now)
        assert isinstance(decision, transitions.Retry)
        error = transitions.error_entry(attempt=1, at=now, kind="error", error="boom")
        state = await transitions.fail(conn, Fence.of(j), decision=decision, error=error)
        assert state == JobState.RETRYABLE
        assert await transitions.stage_due(conn) == 1  # the stager promotes retryable jobs too
        [j] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
        decision = transitions.after_failure(j, permanent=False, backoff_seconds=0, now=now)
        assert isinstance(decision, transitions.Discard)
        await transitions.fail(conn, Fence.of(j), decision=decision, error=error)
        final = await job_store.get_job(conn, job.id, tenant_id=None)
        assert final is not None and final.state == JobState.DISCARDED and len(final.errors) == 2
        retried = await transitions.retry_final(conn, job.id, tenant_id="t1")
        assert retried is not None and retried.state == JobState.AVAILABLE and retried.attempt == 0


async def test_a_new_attempt_starts_without_the_last_attempts_progress(settings):
    """Whatever path brings a job back (retry after a failure, a stopping machine handing it back,
    a retry by hand), its next claim shows no progress until that attempt reports: a step shown
    at "40 of 50" the moment its retry starts tells the reader something the new attempt never did."""
    conn = await connect(settings.database_url)
    async with conn:
        job = await job_store.insert_job(conn, new(max_attempts=3))
        now = datetime.now(UTC)
        error = transitions.error_entry(attempt=1, at=now, kind="error", error="boom")

        async def claim_and_report(done: int) -> Fence:
            [j] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
            assert j.progress is None  # the claim's own answer
            seen = await job_store.get_job(conn, job.id, tenant_id="t1")
            assert seen is not None and seen.state == JobState.EXECUTING and seen.progress is None
            fence = Fence.of(j)
            assert await transitions.heartbeat(conn, held=[fence], progress=[{"done": done, "total": 50}]) == {j.id}
            reported = await job_store.get_job(conn, job.id, tenant_id="t1")
            assert reported is not None and reported.progress == {"done": done, "total": 50}
            return fence

        fence = await claim_and_report(40)
        retry = transitions.Retry(at=now)
        assert await transitions.fail(conn, fence, decision=retry, error=error) == JobState.RETRYABLE
        assert await transitions.stage_due(conn) == 1
        fence = await claim_and_report(30)
        await transitions.hand_back(conn, fence)  # a stopping machine gives the attempt back
        fence = await claim_and_report(20)
        await transitions.fail(conn, fence, decision=transitions.Discard(), error=error)
        discarded = await job_store.get_job(conn, job.id, tenant_id="t1")
        assert discarded is not None and discarded.progress == {"done": 20, "total": 50}  # kept for the record
        assert await transitions.retry_final(conn, job.id, tenant_id="t1") is not None
        fence = await claim_and_report(10)
        await transitions.complete(conn, fence, result={})
        done = await job_store.get_job(conn, job.id, tenant_id="t1")
        assert done is not None and done.progress == {"done": 10, "total": 50}  # the last attempt's


async def test_scheduled_job_is_not_claimed_before_it_is_due(settings):
    conn = await connect(settings.database_url)
    async with conn:
        later = await job_store.insert_job(conn, new(scheduled_at=datetime.now(UTC) + timedelta(hours=1)))
        assert later.state == JobState.SCHEDULED
        assert await transitions.claim(conn, queue="default", machine_id="m", max_jobs=5) == []
        assert await transitions.stage_due(conn) == 0


async def test_lifeline_rescues_stale_and_orphaned_jobs(settings):
    conn = await connect(settings.database_url)
    async with conn:
        a = await job_store.insert_job(conn, new())
        b = await job_store.insert_job(conn, new(max_attempts=1))
        await transitions.claim(conn, queue="default", machine_id="gone", max_jobs=2)
        await job_store.record_machine(
            conn, machine_id="gone", queue="default", launcher="local", job_id=None, detail={}
        )
        assert await transitions.rescue_stale(conn, rescue_after_seconds=3600) == []
        await job_store.machine_exited(conn, "gone", exit_code=137)
        rescued = {r.id: r.state for r in await transitions.rescue_stale(conn, rescue_after_seconds=3600)}
        assert rescued == {a.id: "retryable", b.id: "discarded"}
        job = await job_store.get_job(conn, a.id, tenant_id=None)
        assert job is not None and job.errors[-1]["kind"] == "rescued"
        # The entry places the lost attempt on a timeline: which machine ran it, from when.
        assert job.errors[-1]["machine"] == "gone" and job.attempted_at is not None
        assert datetime.fromisoformat(job.errors[-1]["startedAt"]) == job.attempted_at


async def test_cancel_by_criteria_is_tenant_scoped(settings):
    conn = await connect(settings.database_url)
    async with conn:
        mine = await job_store.insert_job(conn, new(tenant_id="a"))
        theirs = await job_store.insert_job(conn, new(tenant_id="b"))
        cancelled = await transitions.cancel(conn, JobFilter(tenant_id="a", queue="default"))
        assert [c.id for c in cancelled] == [mine.id]
        other = await job_store.get_job(conn, theirs.id, tenant_id=None)
        assert other is not None and other.state == JobState.AVAILABLE


async def test_unique_job_inserted_concurrently_exists_once(settings):
    options = UniqueOptions(period="infinity")
    args = {"order": 42}
    key = unique_key(options, tenant_id="t1", queue="default", worker="echo", args=args, now=datetime.now(UTC))
    job = new(args=args, unique_key=key, unique_states=list(options.states))

    async def insert_one():
        conn = await connect(settings.database_url)
        async with conn:
            return await job_store.insert_job(conn, job)

    results = await asyncio.gather(*(insert_one() for _ in range(10)))
    assert len({r.id for r in results}) == 1
    assert sum(not r.conflict for r in results) == 1
    conn = await connect(settings.database_url)
    async with conn:
        cur = await conn.execute("SELECT count(*) AS n FROM jobs")
        assert _one(await cur.fetchone())["n"] == 1


async def test_twenty_claimers_claim_each_attempt_once_within_the_queue_limit(settings):
    limit, total = 7, 1000
    conn = await connect(settings.database_url)
    async with conn:
        await conn.execute("UPDATE queues SET \"limit\" = %s WHERE name = 'default'", (limit,))
        await job_store.insert_jobs(conn, [new(args={"i": i}) for i in range(total)])
    claims: list[tuple[int, int]] = []
    samples: list[int] = []
    done = asyncio.Event()

    async def claimer(n: int) -> None:
        c = await connect(settings.database_url)
        async with c:
            while True:
                jobs = await transitions.claim(c, queue="default", machine_id=f"m{n}", max_jobs=3)
                if not jobs:
                    cur = await c.execute("SELECT count(*) AS n FROM jobs WHERE state <> 'completed'")
                    if _one(await cur.fetchone())["n"] == 0:
                        return
                    await asyncio.sleep(0.001)
                    continue
                claims.extend((j.id, j.attempt) for j in jobs)
                await asyncio.sleep(random.random() / 500)
                for j in jobs:
                    await transitions.complete(c, Fence.of(j), result={})

    async def sampler() -> None:
        c = await connect(settings.database_url)
        async with c:
            while not done.is_set():
                cur = await c.execute("SELECT count(*) AS n FROM jobs WHERE state = 'executing'")
                samples.append(_one(await cur.fetchone())["n"])
                await asyncio.sleep(0.002)

    sampling = asyncio.create_task(sampler())
    await asyncio.wait_for(asyncio.gather(*(claimer(n) for n in range(20))), timeout=120)
    done.set()
    await sampling
    assert len(claims) == total and len(set(claims)) == total
    assert {a for _, a in claims} == {1}
    assert samples and max(samples) <= limit
    assert max(samples) > 1  # the claimers really ran concurrently


def _one(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        raise AssertionError("the query returned no row")
    return row


def test_queries_file_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicate"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    assert "claim_jobs" in QUERIES


async def test_batch_completion_retried_after_a_lost_reply_recognises_its_own_work(settings):
    conn = await connect(settings.database_url)
    async with conn:
        mine = await job_store.insert_job(conn, new())
        taken = await job_store.insert_job(conn, new())
        claimed = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=2)
        fences = {j.id: Fence.of(j) for j in claimed}
        await transitions.cancel(conn, JobFilter(tenant_id=None, ids=[taken.id]))
        done = [(fences[mine.id], {"n": 1}), (fences[taken.id], {"n": 2})]
        first = await transitions.complete_many(conn, done=done)
        assert first == ({mine.id}, {mine.id})
        # The same batch again, as after a commit whose reply never arrived: still ours, not fresh.
        again = await transitions.complete_many(conn, done=done)
        assert again == ({mine.id}, set())
        forged = [(replace(fence, claim_token=uuid.uuid4()), result) for fence, result in done]
        assert await transitions.complete_many(conn, done=forged) == (set(), set())


@pytest.mark.parametrize("at", ["10000-01-01 00:00:00+00", "0001-12-31 23:00:00+00 BC"])
async def test_a_time_no_reader_can_load_is_refused_by_the_table_whoever_writes_it(settings, at):
    conn = await connect(settings.database_url)
    async with conn:
        [job] = await job_store.insert_jobs(conn, [new()])
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("UPDATE jobs SET scheduled_at = %s::timestamptz WHERE id = %s", (at, job.id))
        cur = await conn.execute("SELECT count(*) AS n FROM jobs WHERE scheduled_at = %s::timestamptz", (at,))
        row = await cur.fetchone()
        assert row is not None and row["n"] == 0
