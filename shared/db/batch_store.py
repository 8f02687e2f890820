"""Batches: jobs posted together, with counters of final states kept by the database
(migrations/0008) and a callback enqueued once when every job is final."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import job_store
from .job_store import Conn
from .models import FINAL_STATES, JobState, NewJob
from .sql import QUERIES


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchView:
    """A batch as read: its row (None for a bulk email made before batches had rows) and counts."""

    id: str
    tenant_id: str
    total: int
    counts: dict[str, int]  # every job state, 0 when none
    callback_url: str | None
    callback_job_id: int | None
    inserted_at: datetime | None
    finished_at: datetime | None

    @property
    def done(self) -> int:
        return sum(self.counts[state.value] for state in FINAL_STATES)


async def insert_batch(
    conn: Conn, *, batch_id: str, tenant_id: str, total: int, callback_url: str | None, request_id: str | None
) -> None:
    await conn.execute(
        QUERIES["insert_batch"],
        {
            "id": batch_id,
            "tenant_id": tenant_id,
            "total": total,
            "callback_url": callback_url,
            "request_id": request_id,
        },
    )


async def insert_batch_with_jobs(
    conn: Conn, *, batch_id: str, tenant_id: str, jobs: list[NewJob], callback_url: str | None, request_id: str | None
) -> list[int]:
    """The batch row and its jobs in one transaction: all of them, or nothing. The jobs' ids."""
    async with conn.transaction():
        await insert_batch(
            conn,
            batch_id=batch_id,
            tenant_id=tenant_id,
            total=len(jobs),
            callback_url=callback_url,
            request_id=request_id,
        )
        return await job_store.insert_job_ids(conn, jobs)


async def get_batch(conn: Conn, batch_id: str, *, tenant_id: str | None) -> BatchView | None:
    """The batch with counts per state; None when it does not exist for this tenant."""
    params = {"id": batch_id, "tenant_id": tenant_id}
    cur = await conn.execute(QUERIES["get_batch"], params)
    row = await cur.fetchone()
    cur = await conn.execute(QUERIES["batch_state_counts"], params)
    live: dict[str, int] = {r["state"]: int(r["n"]) for r in await cur.fetchall()}
    counts = {state.value: live.get(state.value, 0) for state in JobState}
    if row is None:
        if not live:
            return None
        any_job = await _any_tenant(conn, batch_id, tenant_id)
        return BatchView(
            id=batch_id,
            tenant_id=any_job,
            total=sum(counts.values()),
            counts=counts,
            callback_url=None,
            callback_job_id=None,
            inserted_at=None,
            finished_at=None,
        )
    # Final counts come from the batch row: they survive the pruner, which deletes final jobs.
    for state in FINAL_STATES:
        counts[state.value] = int(row[state.value])
    return BatchView(
        id=row["id"],
        tenant_id=row["tenant_id"],
        total=int(row["total"]),
        counts=counts,
        callback_url=row["callback_url"],
        callback_job_id=row["callback_job_id"],
        inserted_at=row["inserted_at"],
        finished_at=row["finished_at"],
    )


async def _any_tenant(conn: Conn, batch_id: str, tenant_id: str | None) -> str:
    if tenant_id is not None:
        return tenant_id
    cur = await conn.execute(QUERIES["list_jobs"], _one_of_batch(batch_id))
    row = await cur.fetchone()
    return str(row["tenant_id"]) if row else ""


def _one_of_batch(batch_id: str) -> dict[str, Any]:
    return {
        "tenant_id": None,
        "queue": None,
        "states": None,
        "worker": None,
        "batch_id": batch_id,
        "tag": None,
        "before_id": None,
        "limit": 1,
    }
