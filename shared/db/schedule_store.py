"""Schedules: cron templates of jobs, and the record of which occurrence inserted which job."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .job_store import Conn
from .sql import QUERIES


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    id: uuid.UUID
    tenant_id: str
    name: str
    cron: str
    time_zone: str
    queue: str
    worker: str
    args: dict[str, Any]
    meta: dict[str, Any]
    tags: list[str]
    priority: int
    max_attempts: int
    misfire: str
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None
    inserted_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Schedule:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


async def insert_schedule(conn: Conn, **values: Any) -> Schedule | None:
    """The new schedule; None when the tenant already has one of that name."""
    params = {**values, "args": Jsonb(values["args"]), "meta": Jsonb(values["meta"])}
    cur = await conn.execute(QUERIES["insert_schedule"], params)
    row = await cur.fetchone()
    return Schedule.from_row(row) if row else None


async def get_schedule(conn: Conn, schedule_id: uuid.UUID, *, tenant_id: str | None) -> Schedule | None:
    cur = await conn.execute(QUERIES["get_schedule"], {"id": schedule_id, "tenant_id": tenant_id})
    row = await cur.fetchone()
    return Schedule.from_row(row) if row else None


async def list_schedules(conn: Conn, *, tenant_id: str | None) -> list[Schedule]:
    cur = await conn.execute(QUERIES["list_schedules"], {"tenant_id": tenant_id})
    return [Schedule.from_row(row) for row in await cur.fetchall()]


async def set_paused(
    conn: Conn, schedule_id: uuid.UUID, *, tenant_id: str | None, paused: bool, next_run_at: datetime | None
) -> Schedule | None:
    cur = await conn.execute(
        QUERIES["set_schedule_paused"],
        {"id": schedule_id, "tenant_id": tenant_id, "paused": paused, "next_run_at": next_run_at},
    )
    row = await cur.fetchone()
    return Schedule.from_row(row) if row else None


async def delete_schedule(conn: Conn, schedule_id: uuid.UUID, *, tenant_id: str | None) -> bool:
    cur = await conn.execute(QUERIES["delete_schedule"], {"id": schedule_id, "tenant_id": tenant_id})
    return await cur.fetchone() is not None


async def due_schedules(conn: Conn, *, now: datetime, limit: int) -> list[Schedule]:
    cur = await conn.execute(QUERIES["due_schedules"], {"now": now, "limit": limit})
    return [Schedule.from_row(row) for row in await cur.fetchall()]


async def advance(conn: Conn, schedule: Schedule, *, next_run_at: datetime, fired_at: datetime | None) -> bool:
    """Move the schedule past what was handled; False when another leader already moved it."""
    cur = await conn.execute(
        QUERIES["advance_schedule"],
        {"id": schedule.id, "was": schedule.next_run_at, "next_run_at": next_run_at, "fired_at": fired_at},
    )
    return await cur.fetchone() is not None


async def claim_occurrence(conn: Conn, schedule_id: uuid.UUID, occurrence_at: datetime) -> bool:
    """True for the one caller that may insert this occurrence's job."""
    cur = await conn.execute(QUERIES["claim_occurrence"], {"id": schedule_id, "occurrence_at": occurrence_at})
    return await cur.fetchone() is not None


async def record_occurrence_job(conn: Conn, schedule_id: uuid.UUID, occurrence_at: datetime, job_id: int) -> None:
    await conn.execute(
        QUERIES["record_occurrence_job"], {"id": schedule_id, "occurrence_at": occurrence_at, "job_id": job_id}
    )
