"""Jobs as a machine holds them: the `Job` row that a handler's `run(job, ctx)` is given in tests."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from functions.handlers.base import HandlerContext
from functions.registry import load_registry
from shared.db.models import Job, JobState

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
    spec = load_registry()[queue]
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
        claim_token=uuid.uuid4(),
        attempted_by=MACHINE_ID,
        heartbeat_at=now,
        inserted_at=now if inserted_at is None else inserted_at,
        scheduled_at=now,
        attempted_at=now,
        completed_at=None,
        cancelled_at=None,
        discarded_at=None,
    )


async def run_handler(handler: ModuleType, job: Job, ctx: HandlerContext) -> dict[str, Any]:
    """Run `handler` on `job` as a machine does: in the job's own context, the outputs it recorded
    in the result (whatever the handler itself returned as outputs)."""
    job_ctx = ctx.for_job(job)
    result = await handler.run(job, job_ctx)
    return job_ctx.recorded_result(result)


def stored_bytes(ctx: HandlerContext, key: str) -> bytes:
    """The object at `key`, read through its own tenant's view of the bucket."""
    return ctx.bucket.for_tenant(key.split("/")[1]).get_bytes(key)


def store_bytes(ctx: HandlerContext, key: str, data: bytes, content_type: str) -> None:
    """Seed an object at `key` (an upload, another job's output) through its tenant's view."""
    ctx.bucket.for_tenant(key.split("/")[1]).put_bytes(key, data, content_type)
