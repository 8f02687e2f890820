"""Claims as fences, unique keys that cannot stop the engine, and callbacks from every final state.

Each test drives real SQL against a real Postgres: the guarantees live in the schema (a token per
claim, a CHECK on unique states, a trigger for callbacks), so no code path can forget them.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from functions.registry import load_registry
from shared.db import job_store, transitions
from shared.db.models import Fence, JobState, NewJob
from shared.db.pool import connect
from shared.errors import LostJobError, UniqueKeyHeld
from shared.schemas.common import UniqueOptions
from shared.schemas.webhooks import WebhookRequest
from shared.unique import unique_key

IN_FLIGHT = ["scheduled", "available", "executing", "retryable"]


def new(**overrides: Any) -> NewJob:
    values: dict[str, Any] = {"queue": "default", "worker": "echo", "tenant_id": "t1", "args": {"n": 1}}
    values.update(overrides)
    return NewJob(**values)


def unique(**overrides: Any) -> NewJob:
    key = unique_key(
        UniqueOptions(), tenant_id="t1", queue="default", worker="echo", args={"n": 1}, now=datetime.now(UTC)
    )
    values: dict[str, Any] = {"unique_key": key, "unique_states": [*IN_FLIGHT, "completed"], **overrides}
    return new(**values)


async def test_a_stale_claim_cannot_write_after_the_same_machine_claims_the_job_again(settings):
    """Hand-back (and snooze) give the attempt back, so (attempt, machine) repeats across claims;
    the claim token does not: the first claim's fence is refused after the second claim."""
    conn = await connect(settings.database_url)
    async with conn:
        await job_store.insert_job(conn, new())
        [first] = await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=1)
        await transitions.hand_back(conn, Fence.of(first))
        [second] = await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=1)
        assert (second.attempt, second.attempted_by) == (first.attempt, first.attempted_by)
        assert second.claim_token is not None and second.claim_token != first.claim_token
        with pytest.raises(LostJobError):
            await transitions.complete(conn, Fence.of(first), result={"stale": True})
        with pytest.raises(LostJobError):
            await transitions.fail(
                conn,
                Fence.of(first),
                decision=transitions.Discard(),
                error=transitions.error_entry(attempt=1, at=datetime.now(UTC), kind="error", error="stale"),
            )
        assert await transitions.heartbeat(conn, held=[Fence.of(first)]) == set()
        completed, fresh = await transitions.complete_many(conn, done=[(Fence.of(first), {})])
        assert completed == fresh == set()
        await transitions.complete(conn, Fence.of(second), result={"ok": 1})
        done = await job_store.get_job(conn, second.id, tenant_id=None)
        assert done is not None and done.result == {"ok": 1} and done.claim_token == second.claim_token


async def test_every_claim_path_gets_a_fresh_token_even_raw_sql(settings):
    conn = await connect(settings.database_url)
    async with conn:
        job = await job_store.insert_job(conn, new())
        await conn.execute(
            "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'raw', attempted_at = now()"
            " WHERE id = %s",
            (job.id,),
        )
        row = await job_store.get_job(conn, job.id, tenant_id=None)
        assert row is not None and row.claim_token is not None
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("UPDATE jobs SET claim_token = NULL WHERE id = %s", (job.id,))


async def test_a_unique_key_must_cover_every_in_flight_state(settings):
    """A key that skips an in-flight state would let two rows meet when one moves into it (the
    stager, a claim, a rescue): the database refuses such a key at insert."""
    conn = await connect(settings.database_url)
    async with conn:
        for states in (["available"], ["scheduled", "available"], ["executing"], ["retryable", "completed"]):
            with pytest.raises(psycopg.errors.CheckViolation):
                await job_store.insert_job(conn, unique(unique_states=states))
        with pytest.raises(psycopg.errors.CheckViolation):
            await job_store.insert_job(conn, unique(unique_states=[*IN_FLIGHT, "bogus"]))


async def test_scheduled_unique_jobs_conflict_at_insert_so_staging_never_meets_them(settings):
    conn = await connect(settings.database_url)
    async with conn:
        later = datetime.now(UTC) + timedelta(milliseconds=200)
        first = await job_store.insert_job(conn, unique(scheduled_at=later))
        second = await job_store.insert_job(conn, unique(scheduled_at=later))
        assert first.state == JobState.SCHEDULED and second.conflict and second.id == first.id
        await conn.execute("UPDATE jobs SET scheduled_at = now() - interval '1 second'")
        assert await transitions.stage_due(conn) == 1


async def test_retry_into_a_held_unique_key_is_a_conflict_naming_the_holder(settings):
    conn = await connect(settings.database_url)
    async with conn:
        old = await job_store.insert_job(conn, unique())
        await transitions.cancel(conn, job_store.JobFilter(tenant_id="t1", ids=[old.id]))
        holder = await job_store.insert_job(conn, unique())
        assert not holder.conflict
        with pytest.raises(UniqueKeyHeld) as raised:
            await transitions.retry_final(conn, old.id, tenant_id="t1")
        assert raised.value.holder_id == holder.id
        again = await job_store.get_job(conn, old.id, tenant_id=None)
        assert again is not None and again.state == JobState.CANCELLED  # nothing changed
        # The connection is still usable: the failed statement did not poison it.
        assert await job_store.get_job(conn, holder.id, tenant_id="t1") is not None


async def _callbacks(conn: Any) -> dict[int, list[dict[str, Any]]]:
    cur = await conn.execute("SELECT * FROM jobs WHERE queue = 'webhooks' ORDER BY id")
    found: dict[int, list[dict[str, Any]]] = {}
    for row in await cur.fetchall():
        found.setdefault(row["meta"]["callbackFor"], []).append(row)
    return found


async def test_every_final_transition_enqueues_exactly_one_callback(settings):
    """Machine completion, machine discard, lifeline discard, cancel of each live state: each makes
    one webhooks job, with the args the webhooks handler accepts, describing the final row."""
    meta = {"callbackUrl": "https://hooks.example.com/done", "requestId": "r-1"}
    conn = await connect(settings.database_url)
    async with conn:
        completed = await job_store.insert_job(conn, new(meta=meta, args={"n": 1}))
        discarded = await job_store.insert_job(conn, new(meta=meta, args={"n": 2}, max_attempts=1))
        rescued = await job_store.insert_job(conn, new(meta=meta, args={"n": 3}, max_attempts=1))
        claimed = {j.id: j for j in await transitions.claim(conn, queue="default", machine_id="m", max_jobs=3)}
        await transitions.complete(conn, Fence.of(claimed[completed.id]), result={"outputs": [{"key": "k"}]})
        error = transitions.error_entry(attempt=1, at=datetime.now(UTC), kind="error", error="boom")
        await transitions.fail(conn, Fence.of(claimed[discarded.id]), decision=transitions.Discard(), error=error)
        await conn.execute("UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (rescued.id,))
        assert [r.state for r in await transitions.rescue_stale(conn, rescue_after_seconds=60)] == ["discarded"]
        scheduled = await job_store.insert_job(
            conn, new(meta=meta, args={"n": 4}, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
        )
        available = await job_store.insert_job(conn, new(meta=meta, args={"n": 5}))
        no_callback = await job_store.insert_job(conn, new(args={"n": 6}))
        cancelled = await transitions.cancel(
            conn, job_store.JobFilter(tenant_id="t1", ids=[scheduled.id, available.id, no_callback.id])
        )
        assert len(cancelled) == 3

        found = await _callbacks(conn)
        assert sorted(found) == sorted([completed.id, discarded.id, rescued.id, scheduled.id, available.id])
        for job_id, rows in found.items():
            assert len(rows) == 1
            final = await job_store.get_job(conn, job_id, tenant_id=None)
            assert final is not None
            [row] = rows
            assert WebhookRequest.model_validate(row["args"]).function_args() == row["args"]
            assert row["args"]["event"] == f"job.{final.state.value}"
            payload = row["args"]["payload"]
            assert (payload["id"], payload["state"], payload["attempt"]) == (job_id, final.state.value, final.attempt)
            assert row["tenant_id"] == "t1" and row["worker"] == load_registry()["webhooks"].worker
            assert row["max_attempts"] == load_registry()["webhooks"].max_attempts
            assert row["meta"] == {"requestId": "r-1", "callbackFor": job_id}
        assert found[completed.id][0]["args"]["payload"]["outputKeys"] == ["k"]
        assert found[rescued.id][0]["args"]["payload"]["error"]["kind"] == "rescued"

        # Retried and final again: a second final state is a second callback, never a repeat of one.
        await transitions.retry_final(conn, discarded.id, tenant_id="t1")
        [again] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
        await transitions.complete(conn, Fence.of(again), result={})
        assert [r["args"]["event"] for r in (await _callbacks(conn))[discarded.id]] == [
            "job.discarded",
            "job.completed",
        ]


def test_fence_of_a_job_that_is_not_claimed_is_refused():
    from tests.support.jobs import held_job

    job = held_job(queue="default", args={})
    assert Fence.of(job).claim_token == job.claim_token
    with pytest.raises(ValueError):
        Fence.of(replace(job, claim_token=None))


async def test_a_snooze_counts_whatever_meta_snoozed_held_before(settings):
    """The count is the service's: a value of another type (from before the API refused it) starts
    again at 1 instead of failing the snooze write (which stopped the machine)."""
    conn = await connect(settings.database_url)
    async with conn:
        for held, counted in (("", 1), ([1], 1), (2.7, 3), (None, 1)):
            await job_store.insert_job(conn, new(meta={"snoozed": held}))
            [job] = await transitions.claim(conn, queue="default", machine_id="m", max_jobs=1)
            await transitions.snooze(conn, Fence.of(job), seconds=60)
            after = await job_store.get_job(conn, job.id, tenant_id=None)
            assert after is not None and after.state == JobState.SCHEDULED and after.meta["snoozed"] == counted
