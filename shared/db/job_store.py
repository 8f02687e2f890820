"""Reads and inserts of jobs, queues and machines. State changes live in transitions.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from .models import Job, MachineRecord, NewJob, QueueStatus
from .sql import QUERIES

Conn = AsyncConnection[DictRow]


def _insert_params(job: NewJob) -> dict[str, Any]:
    return {
        "queue": job.queue,
        "worker": job.worker,
        "tenant_id": job.tenant_id,
        "args": Jsonb(job.args),
        "meta": Jsonb(job.meta),
        "tags": list(job.tags),
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "batch_id": job.batch_id,
        "unique_key": job.unique_key,
        "unique_states": job.unique_states,
        "scheduled_at": _utc(job.scheduled_at),
    }


async def insert_job(conn: Conn, job: NewJob) -> Job:
    """Insert one job (its NOTIFY commits with it). A unique conflict returns the existing job
    with `conflict=True`; the unique index, not a check-then-insert, decides."""
    params = _insert_params(job)
    for _ in range(10):
        cur = await conn.execute(QUERIES["insert_job"], params, prepare=True)
        row = await cur.fetchone()
        if row is not None:
            return Job.from_row(row)
        cur = await conn.execute(QUERIES["find_unique_job"], {"unique_key": job.unique_key})
        existing = await cur.fetchone()
        if existing is not None:
            return Job.from_row(existing, conflict=True)
        # The holder of the key left the covered states between our two statements: try again.
    raise RuntimeError(f"unique insert for key {job.unique_key!r} did not settle")


async def insert_jobs(conn: Conn, jobs: Sequence[NewJob]) -> list[Job]:
    """Insert many jobs in one statement (no unique keys), in order."""
    if not jobs:
        return []
    cur = await conn.execute(QUERIES["insert_jobs"], _many_params(jobs))
    return [Job.from_row(row) for row in await cur.fetchall()]


# From this many jobs on, insert_job_ids writes them with COPY. Measured (10,000 bulk-email rows,
# durable Postgres, medians of 7 interleaved runs): INSERT ... unnest 1,769 ms, reserving the
# ids then COPY 454 ms; at 100 rows 39 ms against 24, at 20 rows 17 against 14, at 1 or 5 rows
# the same within the noise. Below the threshold the INSERT keeps one round trip instead of three.
COPY_THRESHOLD = 16

# The columns of the `copy_jobs` query, in its order.
_COPY_TYPES = [
    "int8",  # id
    "text",  # queue
    "text",  # worker
    "text",  # state
    "text",  # tenant_id
    "jsonb",  # args
    "jsonb",  # meta
    "text[]",  # tags
    "int2",  # priority
    "int4",  # max_attempts
    "text",  # batch_id
    "timestamptz",  # scheduled_at
]


async def insert_job_ids(conn: Conn, jobs: Sequence[NewJob]) -> list[int]:
    """Insert many jobs at once (no unique keys), atomically; their ids, in order (ascending).

    Many jobs go by COPY (see COPY_THRESHOLD), writing the rows the INSERT would: the same
    columns, state and scheduled_at from the transaction's now(), the same triggers."""
    if not jobs:
        return []
    _refuse_unique(jobs)
    if len(jobs) >= COPY_THRESHOLD and all(_copies_faithfully(job) for job in jobs):
        if conn.info.transaction_status == TransactionStatus.IDLE:
            async with conn.transaction():
                return await _copy_jobs(conn, jobs)
        return await _copy_jobs(conn, jobs)
    return await _insert_job_ids(conn, jobs)


async def _insert_job_ids(conn: Conn, jobs: Sequence[NewJob]) -> list[int]:
    cur = await conn.execute(QUERIES["insert_jobs_returning_ids"], _many_params(jobs))
    return [row["id"] for row in await cur.fetchall()]


async def _copy_jobs(conn: Conn, jobs: Sequence[NewJob]) -> list[int]:
    """COPY `jobs` in, with ids reserved and now() read in one round trip before; inside the
    caller's transaction (now() is the COPY's own, and the ids are lost if it rolls back)."""
    cur = conn.cursor()
    await cur.execute(QUERIES["reserve_job_ids"], {"n": len(jobs)})
    reserved = await cur.fetchone()
    assert reserved is not None
    now: datetime = reserved["now"]
    ids: list[int] = reserved["ids"]
    async with cur.copy(QUERIES["copy_jobs"]) as copy:
        copy.set_types(_COPY_TYPES)
        for job_id, job in zip(ids, jobs, strict=True):
            at = job.scheduled_at
            await copy.write_row(
                (
                    job_id,
                    job.queue,
                    job.worker,
                    "available" if at is None or at <= now else "scheduled",
                    job.tenant_id,
                    job.args,
                    job.meta,
                    job.tags,
                    job.priority,
                    job.max_attempts,
                    job.batch_id,
                    now if at is None else at,
                )
            )
    return ids


_INT2 = range(-(2**15), 2**15)
_INT4 = range(-(2**31), 2**31)


def _copies_faithfully(job: NewJob) -> bool:
    """Whether the binary COPY writes what the INSERT would, or refuses it alike. A naive time
    takes the session's zone only as text; psycopg's binary int2/int4 dumpers wrap a number out of
    their range (65,539 becomes 3) where the INSERT refuses it, and take True for 1 where the
    INSERT refuses a boolean; tags that are not all text are dumped otherwise. Such jobs take the
    INSERT, the reference."""
    return (
        (job.scheduled_at is None or job.scheduled_at.tzinfo is not None)
        and type(job.priority) is int
        and job.priority in _INT2
        and type(job.max_attempts) is int
        and job.max_attempts in _INT4
        and all(type(tag) is str for tag in job.tags)
    )


def _utc(at: datetime | None) -> datetime | None:
    """An aware time in UTC: Postgres refuses offsets past 15:59 sent as text (the INSERT's
    parameters), which RFC 3339 and the API allow, while COPY (binary) took them: so every path
    sends the instant in UTC. A naive time is left as it is (the session's zone reads it)."""
    return at.astimezone(UTC) if at is not None and at.tzinfo is not None else at


def _refuse_unique(jobs: Sequence[NewJob]) -> None:
    if any(job.unique_key for job in jobs):
        raise ValueError("bulk inserts do not take unique jobs; insert them one by one")


def _many_params(jobs: Sequence[NewJob]) -> dict[str, Any]:
    _refuse_unique(jobs)
    return {
        "queue": [j.queue for j in jobs],
        "worker": [j.worker for j in jobs],
        "tenant_id": [j.tenant_id for j in jobs],
        "args": [Jsonb(j.args) for j in jobs],
        "meta": [Jsonb(j.meta) for j in jobs],
        "tags": [Jsonb(list(j.tags)) for j in jobs],
        "priority": [j.priority for j in jobs],
        "max_attempts": [j.max_attempts for j in jobs],
        "batch_id": [j.batch_id for j in jobs],
        "scheduled_at": [_utc(j.scheduled_at) for j in jobs],
    }


async def get_job(conn: Conn, job_id: int, *, tenant_id: str | None) -> Job | None:
    """One job; with `tenant_id`, None for another tenant's job exactly as for a missing one."""
    cur = await conn.execute(QUERIES["get_job"], {"id": job_id, "tenant_id": tenant_id}, prepare=True)
    row = await cur.fetchone()
    return Job.from_row(row) if row else None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Criteria for listing or cancelling jobs; None means any."""

    tenant_id: str | None
    ids: list[int] | None = None
    queue: str | None = None
    states: list[str] | None = None
    worker: str | None = None
    batch_id: str | None = None
    tag: str | None = None


async def list_jobs(conn: Conn, criteria: JobFilter, *, limit: int, before_id: int | None) -> list[Job]:
    """Jobs matching `criteria`, newest first, `limit` at most, ids below `before_id`."""
    cur = await conn.execute(
        QUERIES["list_jobs"],
        {
            "tenant_id": criteria.tenant_id,
            "queue": criteria.queue,
            "states": criteria.states,
            "worker": criteria.worker,
            "batch_id": criteria.batch_id,
            "tag": criteria.tag,
            "before_id": before_id,
            "limit": limit,
        },
    )
    return [Job.from_row(row) for row in await cur.fetchall()]


async def queue_statuses(conn: Conn, name: str | None = None) -> list[QueueStatus]:
    cur = await conn.execute(QUERIES["queue_statuses"], {"name": name})
    return [QueueStatus.from_row(row) for row in await cur.fetchall()]


async def set_queue_paused(conn: Conn, name: str, *, paused: bool) -> bool:
    cur = await conn.execute(QUERIES["set_queue_paused"], {"name": name, "paused": paused})
    return await cur.fetchone() is not None


async def set_queue_limit(conn: Conn, name: str, *, limit: int) -> bool:
    cur = await conn.execute(QUERIES["set_queue_limit"], {"name": name, "limit": limit})
    return await cur.fetchone() is not None


async def recent_machines(conn: Conn, *, limit: int = 100) -> list[MachineRecord]:
    cur = await conn.execute(QUERIES["recent_machines"], {"limit": limit})
    return [MachineRecord.from_row(row) for row in await cur.fetchall()]


async def live_machines(conn: Conn) -> list[MachineRecord]:
    cur = await conn.execute(QUERIES["live_machines"])
    return [MachineRecord.from_row(row) for row in await cur.fetchall()]


async def record_machine(
    conn: Conn, *, machine_id: str, queue: str, launcher: str, job_id: int | None, detail: dict[str, Any]
) -> None:
    await conn.execute(
        QUERIES["insert_machine"],
        {"id": machine_id, "queue": queue, "launcher": launcher, "job_id": job_id, "detail": Jsonb(detail)},
    )


async def machine_started(conn: Conn, machine_id: str) -> None:
    await conn.execute(QUERIES["machine_started"], {"id": machine_id})


async def machine_seen(conn: Conn, machine_id: str) -> None:
    await conn.execute(QUERIES["machine_seen"], {"id": machine_id}, prepare=True)


async def machine_ran_jobs(conn: Conn, machine_id: str, *, count: int) -> None:
    if count:
        await conn.execute(QUERIES["machine_ran_jobs"], {"id": machine_id, "count": count}, prepare=True)


async def machine_exited(
    conn: Conn, machine_id: str, *, exit_code: int | None, oom_killed: bool = False, failed: bool = False
) -> bool:
    cur = await conn.execute(
        QUERIES["machine_exited"],
        {
            "id": machine_id,
            "exit_code": exit_code,
            "oom_killed": oom_killed,
            "state": "failed" if failed else "exited",
        },
    )
    return await cur.fetchone() is not None
