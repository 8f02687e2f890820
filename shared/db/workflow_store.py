"""Workflows: steps are jobs; what each waits for lives in workflow_steps, moved on by the database
as steps end (migrations/0008)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .job_store import Conn, _insert_params
from .models import NewJob
from .sql import QUERIES


@dataclass(frozen=True, slots=True, kw_only=True)
class NewStep:
    name: str
    job: NewJob
    depends_on: list[str]
    run_on_failure: bool
    args_template: dict[str, Any]  # the job's args with the references left in
    not_before: datetime | None  # its own scheduledAt/scheduleIn, applied once it may run


async def insert_workflow(
    conn: Conn, *, workflow_id: uuid.UUID, tenant_id: str, name: str | None, steps: list[NewStep]
) -> dict[str, int] | str:
    """Insert the workflow and its steps (call inside a transaction).
    Returns each step's job id, or the name of a step whose unique key another live job holds."""
    await conn.execute(QUERIES["insert_workflow"], {"id": workflow_id, "tenant_id": tenant_id, "name": name})
    ids: dict[str, int] = {}
    for step in steps:
        params = {**_insert_params(step.job), "waiting": bool(step.depends_on), "workflow_id": workflow_id}
        cur = await conn.execute(QUERIES["insert_workflow_job"], params)
        row = await cur.fetchone()
        if row is None:
            return step.name
        ids[step.name] = row["id"]
    for step in steps:
        await conn.execute(
            QUERIES["insert_workflow_step"],
            {
                "job_id": ids[step.name],
                "workflow_id": workflow_id,
                "name": step.name,
                "depends_on": [ids[dep] for dep in step.depends_on],
                "run_on_failure": step.run_on_failure,
                "args_template": Jsonb(step.args_template),
                "not_before": step.not_before,
            },
        )
    return ids


async def get_workflow(conn: Conn, workflow_id: uuid.UUID, *, tenant_id: str | None) -> dict[str, Any] | None:
    cur = await conn.execute(QUERIES["get_workflow"], {"id": workflow_id, "tenant_id": tenant_id})
    return await cur.fetchone()


async def workflow_steps(conn: Conn, workflow_id: uuid.UUID) -> list[dict[str, Any]]:
    cur = await conn.execute(QUERIES["workflow_steps"], {"id": workflow_id})
    return list(await cur.fetchall())


async def retry_workflow(conn: Conn, workflow_id: uuid.UUID) -> int:
    """Every discarded or cancelled step tried again; how many. Raises UniqueViolation when a
    step's unique key is now held by another live job."""
    cur = await conn.execute(QUERIES["retry_workflow"], {"id": workflow_id})
    row = await cur.fetchone()
    return int(row["retried"]) if row else 0
