"""Jobs as a machine holds them: the `Job` row that a handler's `run(job, ctx)` is given in tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from shared.db.models import Job, JobState
from shared.queues import queue_spec

MACHINE_ID = "test-machine"

# Well above the ids a test database hands out, so output keys (tenants/<t>/jobs/<id>/...) written
# for these jobs never meet those of a stored job in the shared S3 bucket.
_job_ids = itertools.count(900_000)


def held_job(
    *,
    queue: str,
    args: dict[str, Any],
    tenant_id: str = "tenant-1",
    job_id: int | None = None,
    attempt: int = 1,
    inserted_at: datetime | None = None,
) -> Job:
    """An EXECUTING job on `queue` held by "test-machine", as the ingress stored it and a machine claimed it.

    The worker name and retry budget come from the queue's spec; the id is the next of a counter unless
    `job_id` is given; every timestamp is now, except `inserted_at` when given (webhooks sign it)."""
    spec = queue_spec(queue)
    now = datetime.now(UTC)
    return Job(
        id=next(_job_ids) if job_id is None else job_id,
        queue=queue,
        worker=spec.worker,
        state=JobState.EXECUTING,
        tenant_id=tenant_id,
        args=args,
        meta={},
        tags=[],
        priority=0,
        attempt=attempt,
        max_attempts=spec.max_attempts,
        errors=[],
        result=None,
        batch_id=None,
        unique_key=None,
        attempted_by=MACHINE_ID,
        heartbeat_at=now,
        inserted_at=now if inserted_at is None else inserted_at,
        scheduled_at=now,
        attempted_at=now,
        completed_at=None,
        cancelled_at=None,
        discarded_at=None,
    )
