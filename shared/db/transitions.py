"""Every job state change, one function per arrow of the architecture spec.

Writers about a held job take a Fence (the claim's token); a fenced write that matches no row
raises LostJobError (the job was cancelled or rescued meanwhile, and this machine must publish
nothing). Callbacks of jobs that become final are enqueued by the database itself, in the same
statement, whoever makes them final (migrations/0003).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.errors import LostJobError, UniqueKeyHeld

from .job_store import Conn, JobFilter
from .models import Fence, Job, JobState
from .sql import QUERIES


async def claim(conn: Conn, *, queue: str, machine_id: str, max_jobs: int, prefer_id: int | None = None) -> list[Job]:
    """available -> executing for up to `max_jobs` jobs of `queue`, within its fleet-wide limit."""
    cur = await conn.execute(
        QUERIES["claim_jobs"],
        {"queue": queue, "machine_id": machine_id, "max_jobs": max_jobs, "prefer_id": prefer_id},
        prepare=True,
    )
    return [Job.from_row(row) for row in await cur.fetchall()]


async def rate_wait_seconds(conn: Conn, *, queue: str) -> float | None:
    """Seconds until a full rate window of `queue` lets another job start; None when none is full
    (a machine whose claim came back empty polls again then, not a whole idle poll later)."""
    cur = await conn.execute(QUERIES["rate_wait_seconds"], {"queue": queue}, prepare=True)
    row = await cur.fetchone()
    return None if row is None or row["seconds"] is None else max(0.0, float(row["seconds"]))


async def _fenced(conn: Conn, query: str, fence: Fence, **params: Any) -> None:
    cur = await conn.execute(
        QUERIES[query], {"job_id": fence.job_id, "claim_token": fence.claim_token, **params}, prepare=True
    )
    if await cur.fetchone() is None:
        raise LostJobError(fence.job_id)


async def complete(conn: Conn, fence: Fence, *, result: dict[str, Any]) -> None:
    """executing -> completed. Raises LostJobError if this machine no longer holds the job."""
    await _fenced(conn, "complete_job", fence, result=Jsonb(result))


async def complete_many(
    conn: Conn,
    *,
    done: list[tuple[Fence, dict[str, Any]]],
    progress: list[dict[str, Any] | None] | None = None,
    machine_id: str | None = None,
) -> tuple[set[int], set[int]]:
    """executing -> completed for many held jobs at once, in one statement (which also adds the
    jobs it completed to `machine_id`'s count of jobs run).

    Returns (completed, fresh): every id whose claim is now completed (the rest were cancelled or
    rescued meanwhile and must publish nothing), and those completed by this very statement (an
    earlier try whose reply was lost may already have completed the others).
    """
    cur = await conn.execute(
        QUERIES["complete_jobs"],
        {
            "job_ids": [fence.job_id for fence, _ in done],
            "claim_tokens": [fence.claim_token for fence, _ in done],
            "results": [Jsonb(result) for _, result in done],
            # The handler's last progress report, when it made one (kept otherwise).
            "progress": [Jsonb(p) if p is not None else None for p in (progress or [None] * len(done))],
            "machine_id": machine_id,
        },
        prepare=True,
    )
    rows = await cur.fetchall()
    return {row["id"] for row in rows}, {row["id"] for row in rows if row["fresh"]}


@dataclass(frozen=True, slots=True)
class Retry:
    at: datetime


@dataclass(frozen=True, slots=True)
class Discard:
    pass


def default_backoff_seconds(attempt: int) -> float:
    """Oban's backoff: 15 + 2^attempt seconds, with ±10% jitter."""
    base = 15 + 2 ** min(attempt, 20)
    return float(base * random.uniform(0.9, 1.1))


def after_failure(job: Job, *, permanent: bool, backoff_seconds: float, now: datetime) -> Retry | Discard:
    """Decide what a failed attempt leads to, with no I/O (now passed in)."""
    if permanent or job.attempt >= job.max_attempts:
        return Discard()
    return Retry(at=now + timedelta(seconds=backoff_seconds))


def error_entry(
    *,
    attempt: int,
    at: datetime,
    kind: str,
    error: str,
    machine: str | None = None,
    started_at: datetime | None = None,
) -> dict[str, Any]:
    """One entry of `jobs.errors` (errors are capped so one huge message cannot bloat the row).

    `machine` and `startedAt` (when known) place the attempt on the dashboard's timeline."""
    entry: dict[str, Any] = {"attempt": attempt, "at": at.isoformat(), "kind": kind, "error": error[:2000]}
    if machine is not None:
        entry["machine"] = machine
    if started_at is not None:
        entry["startedAt"] = started_at.isoformat()
    return entry


async def fail(conn: Conn, fence: Fence, *, decision: Retry | Discard, error: dict[str, Any]) -> JobState:
    """executing -> retryable | discarded, recording `error`. Raises LostJobError."""
    if isinstance(decision, Retry):
        state, retry_at = JobState.RETRYABLE, decision.at
    else:
        state, retry_at = JobState.DISCARDED, None
    await _fenced(conn, "fail_job", fence, state=state.value, retry_at=retry_at, error=Jsonb(error))
    return state


async def snooze(conn: Conn, fence: Fence, *, seconds: float) -> None:
    """executing -> scheduled in `seconds`, giving the attempt back. Raises LostJobError."""
    await _fenced(conn, "snooze_job", fence, seconds=seconds)


async def hand_back(conn: Conn, fence: Fence) -> None:
    """executing -> available with the attempt given back (machine shutting down)."""
    await _fenced(conn, "hand_back_job", fence)


async def heartbeat(conn: Conn, *, held: list[Fence], progress: list[dict[str, Any] | None] | None = None) -> set[int]:
    """Refresh the heartbeats of the held claims (and write the progress their handlers reported
    since the last beat, None for none); returns the ids still held."""
    if not held:
        return set()
    cur = await conn.execute(
        QUERIES["heartbeat_jobs"],
        {
            "job_ids": [f.job_id for f in held],
            "claim_tokens": [f.claim_token for f in held],
            "progress": [Jsonb(p) if p is not None else None for p in (progress or [None] * len(held))],
        },
        prepare=True,
    )
    return {row["id"] for row in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class CancelledJob:
    id: int
    queue: str
    was: str
    attempted_by: str | None


async def cancel(conn: Conn, criteria: JobFilter) -> list[CancelledJob]:
    """Any non-final state -> cancelled for the jobs matching `criteria`."""
    cur = await conn.execute(
        QUERIES["cancel_jobs"],
        {
            "tenant_id": criteria.tenant_id,
            "ids": criteria.ids,
            "queue": criteria.queue,
            "worker": criteria.worker,
            "states": criteria.states,
            "batch_id": criteria.batch_id,
        },
    )
    return [CancelledJob(r["id"], r["queue"], r["was"], r["attempted_by"]) for r in await cur.fetchall()]


async def retry_final(conn: Conn, job_id: int, *, tenant_id: str | None) -> Job | None:
    """discarded | cancelled -> available with attempts reset; None if not in those states.

    Raises UniqueKeyHeld when the job's unique key is now held by another live job (the only
    move into a state a key covers that can meet another row: keys cover every in-flight state).
    """
    for _ in range(3):
        try:
            async with conn.transaction():  # a savepoint when the caller is inside a transaction
                cur = await conn.execute(QUERIES["retry_job"], {"id": job_id, "tenant_id": tenant_id})
                row = await cur.fetchone()
            break
        except psycopg.errors.UniqueViolation:
            cur = await conn.execute(QUERIES["unique_key_holder"], {"id": job_id})
            holder = await cur.fetchone()
            if holder is not None:
                raise UniqueKeyHeld(job_id, holder["id"]) from None
            # The holder left the covered states between the two statements: try again.
    else:
        raise UniqueKeyHeld(job_id, None)
    return Job.from_row(row) if row else None


async def stage_due(conn: Conn, *, limit: int = 5000) -> int:
    """scheduled | retryable -> available for jobs that came due; returns how many."""
    cur = await conn.execute(QUERIES["stage_due_jobs"], {"limit": limit}, prepare=True)
    return len(await cur.fetchall())


@dataclass(frozen=True, slots=True)
class RescuedJob:
    id: int
    queue: str
    state: str
    attempted_by: str | None


async def rescue_stale(conn: Conn, *, rescue_after_seconds: float) -> list[RescuedJob]:
    """executing -> retryable | discarded for jobs with a stale heartbeat or a gone machine."""
    cur = await conn.execute(QUERIES["rescue_stale_jobs"], {"rescue_after_seconds": rescue_after_seconds})
    return [RescuedJob(r["id"], r["queue"], r["state"], r["attempted_by"]) for r in await cur.fetchall()]


async def prune(conn: Conn, *, max_age_seconds: float, limit: int = 10_000) -> int:
    """Delete final jobs older than `max_age_seconds`; returns how many."""
    cur = await conn.execute(QUERIES["prune_jobs"], {"max_age_seconds": max_age_seconds, "limit": limit})
    return len(await cur.fetchall())
