"""Rows and jobs for the export tests: job-history rows inserted with plain SQL, export jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from shared.db.models import Job
from tests.support.jobs import held_job

BASE_AT = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


async def add_job(
    conn: AsyncConnection[Any],
    *,
    tenant: str,
    queue: str = "images",
    worker: str = "ProcessImage",
    state: str = "available",
    tags: list[str] | None = None,
    errors: list[str] | None = None,
    priority: int = 0,
    inserted_at: datetime = BASE_AT,
) -> int:
    """Insert one job-history row that satisfies the table's state constraints; returns its id."""
    attempt = len(errors or []) + (0 if state in ("available", "scheduled") else 1)
    attempt = min(attempt, 5)
    attempted_at = None if attempt == 0 else inserted_at + timedelta(seconds=1)
    final_at = inserted_at + timedelta(seconds=2)
    entries = [
        {"attempt": n, "at": inserted_at.isoformat(), "kind": "error", "error": message}
        for n, message in enumerate(errors or [], start=1)
    ]
    row = await (
        await conn.execute(
            """
            INSERT INTO jobs (queue, worker, state, tenant_id, tags, priority, attempt, max_attempts, errors,
                              attempted_by, inserted_at, scheduled_at, attempted_at,
                              completed_at, cancelled_at, discarded_at)
            VALUES (%(queue)s, %(worker)s, %(state)s, %(tenant)s, %(tags)s, %(priority)s, %(attempt)s, 5,
                    %(errors)s, %(attempted_by)s, %(inserted_at)s, %(inserted_at)s, %(attempted_at)s,
                    %(completed_at)s, %(cancelled_at)s, %(discarded_at)s)
            RETURNING id
            """,
            {
                "queue": queue,
                "worker": worker,
                "state": state,
                "tenant": tenant,
                "tags": tags or [],
                "priority": priority,
                "attempt": attempt,
                "errors": Jsonb(entries),
                "attempted_by": "m-1" if state == "executing" else None,
                "inserted_at": inserted_at,
                "attempted_at": attempted_at,
                "completed_at": final_at if state == "completed" else None,
                "cancelled_at": final_at if state == "cancelled" else None,
                "discarded_at": final_at if state == "discarded" else None,
            },
        )
    ).fetchone()
    if row is None:
        raise RuntimeError("INSERT ... RETURNING gave no row")
    return int(row[0] if isinstance(row, tuple) else row["id"])


async def add_many_jobs(conn: AsyncConnection[Any], *, tenant: str, count: int) -> None:
    """Insert `count` completed jobs for `tenant` in one statement (bulk, for multipart tests)."""
    await conn.execute(
        """
        INSERT INTO jobs (queue, worker, state, tenant_id, tags, attempt, errors,
                          inserted_at, scheduled_at, attempted_at, completed_at)
        SELECT 'webhooks', 'DeliverWebhook', 'completed', %(tenant)s, ARRAY['batch-' || (i %% 10), '-x'], 1,
               jsonb_build_array(jsonb_build_object('attempt', 1, 'error', '=bad response ' || i)),
               t, t, t, t + interval '1 second'
          FROM generate_series(1, %(count)s) AS i,
               LATERAL (SELECT %(base)s::timestamptz + i * interval '1 millisecond' AS t) AS x
        """,
        {"tenant": tenant, "count": count, "base": BASE_AT},
    )


def export_job(tenant: str, args: dict[str, Any]) -> Job:
    """An executing `exports` job (not stored: the export reads only the rows the test inserted)."""
    return held_job(queue="exports", tenant_id=tenant, args=args)
