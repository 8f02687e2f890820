"""Batches: `POST /jobs/batch` (jobs of any queues in one transaction) and `GET /batches/{id}`
(counts per state, progress). Bulk emails are batches too (jobs.create_bulk_emails)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared.db import batch_store
from shared.db.batch_store import BatchView
from shared.db.job_store import Conn
from shared.errors import NotFound
from shared.functions import Registry
from shared.schemas.batches import BatchRequest

from . import idempotency
from .auth import acting_tenant, authenticate, reading_tenant
from .batch_insert import refusals_answered
from .http import JSONResponse, parse_model, read_json_body, request_id
from .job_items import item_job
from .presenters import rfc3339


async def create_batch(request: Request) -> Response:
    """POST /jobs/batch: every item a job of its queue, all inserted with their batch in one
    transaction; 422 (nothing inserted) when any item is not valid."""
    settings, pool = request.app.state.settings, request.app.state.pool
    registry: Registry = request.app.state.registry
    principal = authenticate(request, "jobs:write")
    body = await read_json_body(request, max_bytes=settings.bulk_max_body_bytes)
    req = parse_model(BatchRequest, body, context={"settings": settings})
    tenant_id = acting_tenant(principal, req.tenant_id)
    batch_id, rid, now = str(uuid.uuid4()), request_id(request), datetime.now(UTC)
    jobs = []
    for index, item in enumerate(req.jobs):
        job = item_job(registry, item, path=f"jobs.{index}", settings=settings, tenant_id=tenant_id, rid=rid, now=now)
        jobs.append(dataclasses.replace(job, batch_id=batch_id, meta={**job.meta, "batchId": batch_id}))

    async def insert(conn: Conn) -> tuple[int, Any]:
        with refusals_answered(*(job.args for job in jobs), *(job.meta for job in jobs)):
            ids = await batch_store.insert_batch_with_jobs(
                conn, batch_id=batch_id, tenant_id=tenant_id, jobs=jobs, callback_url=req.callback_url, request_id=rid
            )
        return 201, {"batchId": batch_id, "count": len(ids), "jobIds": ids}

    return await idempotency.respond(request, pool, tenant_id=tenant_id, body=body, create=insert)


def batch_json(batch: BatchView) -> dict[str, Any]:
    return {
        "id": batch.id,
        "tenantId": batch.tenant_id,
        "total": batch.total,
        "counts": batch.counts,
        "done": batch.done,
        "progress": round(batch.done / batch.total, 4) if batch.total else 1.0,
        "finished": batch.finished_at is not None or (batch.inserted_at is None and batch.done == batch.total),
        "callbackUrl": batch.callback_url,
        "callbackJobId": batch.callback_job_id,
        "insertedAt": rfc3339(batch.inserted_at),
        "finishedAt": rfc3339(batch.finished_at),
    }


async def get_batch(request: Request) -> Response:
    """GET /batches/{id}: counts per state and progress; 404 for another tenant's batch."""
    principal = authenticate(request, "jobs:read")
    raw = request.path_params["id"]
    if len(raw) > 64:
        raise NotFound("no such batch")
    async with request.app.state.pool.connection() as conn:
        batch = await batch_store.get_batch(conn, raw, tenant_id=reading_tenant(principal))
    if batch is None:
        raise NotFound("no such batch")
    return JSONResponse(batch_json(batch))
