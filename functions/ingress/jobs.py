"""Job endpoints: create per function, read, list, cancel, retry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from starlette.requests import Request
from starlette.responses import Response

from functions.handlers import default as default_functions
from shared.db import batch_store, job_store, transitions
from shared.db.job_store import Conn, JobFilter
from shared.db.models import Job, JobState, NewJob
from shared.db.pool import Pool
from shared.errors import Conflict, NotFound, UniqueKeyHeld, ValidationFailed
from shared.functions import FunctionSpec, Registry
from shared.logging import bind_context
from shared.notify import CONTROL_CHANNEL, notify, stop_machines_message
from shared.schemas.common import CamelModel, JobRequest
from shared.schemas.default import DefaultRequest
from shared.settings import Settings
from shared.telemetry import emit
from shared.unique import unique_key
from shared.vocabulary import Event as EventName

from . import events, idempotency
from .auth import acting_tenant, authenticate, reading_tenant
from .batch_insert import BatchInserter, refusals_answered
from .http import INTEGER_TEXT, JSONResponse, parse_model, parse_query, read_json_body, request_id, single_params
from .presenters import job_json


def _state(request: Request) -> tuple[Settings, Pool]:
    return request.app.state.settings, request.app.state.pool


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def new_job(
    req: JobRequest,
    *,
    spec: FunctionSpec,
    worker: str,
    args: dict[str, Any],
    tenant_id: str,
    rid: str,
    now: datetime,
) -> NewJob:
    """The row to insert for a validated request."""
    options = req.options
    meta: dict[str, Any] = {**options.meta, "requestId": rid}
    if options.callback_url:
        meta["callbackUrl"] = options.callback_url
    key = states = None
    if options.unique is not None:
        key = unique_key(options.unique, tenant_id=tenant_id, queue=spec.queue, worker=worker, args=args, now=now)
        states = [str(state) for state in options.unique.states]
    return NewJob(
        queue=spec.queue,
        worker=worker,
        tenant_id=tenant_id,
        args=args,
        meta=meta,
        tags=list(options.tags),
        priority=options.priority,
        max_attempts=options.max_attempts or spec.max_attempts,
        scheduled_at=options.due_at(now),
        unique_key=key,
        unique_states=states,
    )


async def create_job(request: Request) -> Response:
    """POST /jobs/{queue}: validate, insert (row and NOTIFY in one transaction), answer 201."""
    queue = request.path_params["queue"]
    spec = _registry(request).get(queue)
    if spec is None:
        raise NotFound(f"no function {queue!r}")
    settings, pool = _state(request)
    principal = authenticate(request, "jobs:write")
    body = await read_json_body(request, max_bytes=settings.max_body_bytes)
    # The caller's tenant lets schemas refuse another tenant's storage keys at submit (422).
    context = {"settings": settings, "tenant_id": None if principal.is_admin else principal.tenant_id}
    req = parse_model(spec.request, body, context=context)
    tenant_id = acting_tenant(principal, req.tenant_id)
    if isinstance(req, DefaultRequest):
        worker, args = req.function, _default_args(req)
    else:
        worker, args = spec.worker, req.function_args()
    with refusals_answered(args, req.options.meta):  # the unique key hashes args with orjson
        job = new_job(
            req,
            spec=spec,
            worker=worker,
            args=args,
            tenant_id=tenant_id,
            rid=request_id(request),
            now=datetime.now(UTC),
        )

    batcher: BatchInserter | None = getattr(request.app.state, "batch_inserter", None)
    if batcher is not None and job.unique_key is None and idempotency.idempotency_key(request) is None:
        # A plain job: group commit with whatever other requests are inserting right now.
        created = await batcher.insert(job)
        bind_context(jobId=created.id)  # the request's log lines name the job they created
        return JSONResponse(job_json(created), status_code=201)

    async def insert(conn: Conn) -> tuple[int, Any]:
        with refusals_answered(job.args, job.meta):
            inserted = await job_store.insert_job(conn, job)
        bind_context(jobId=inserted.id)  # the request's log lines name the job they created
        if inserted.conflict:
            emit(EventName.JOB_UNIQUE_CONFLICT, jobId=inserted.id, queue=queue, worker=worker)
        return (200 if inserted.conflict else 201), job_json(inserted)

    return await idempotency.respond(request, pool, tenant_id=tenant_id, body=body, create=insert)


def _default_args(req: DefaultRequest) -> dict[str, Any]:
    if req.function not in default_functions.FUNCTIONS:
        known = ", ".join(sorted(default_functions.FUNCTIONS))
        raise ValidationFailed(
            f"no function {req.function!r} on the default queue",
            errors=[{"path": "function", "message": f"must be one of: {known}"}],
        )
    try:
        return default_functions.validate_args(req.function, req.args)
    except Exception as exc:
        from pydantic import ValidationError

        from .http import validation_errors

        if isinstance(exc, ValidationError):
            errors = [{**e, "path": f"args.{e['path']}" if e["path"] else "args"} for e in validation_errors(exc)]
            raise ValidationFailed("the request body is not valid", errors=errors) from exc
        raise


async def create_bulk_emails(request: Request) -> Response:
    """POST /jobs/emails/bulk: one email job per recipient, all inserted in one transaction."""
    from shared.schemas.emails import BulkEmailRequest, expand_bulk

    settings, pool = _state(request)
    principal = authenticate(request, "jobs:write")
    body = await read_json_body(request, max_bytes=settings.bulk_max_body_bytes)
    req = parse_model(BulkEmailRequest, body, context={"settings": settings})
    tenant_id = acting_tenant(principal, req.tenant_id)
    if req.options.unique is not None:
        raise ValidationFailed(
            "bulk email jobs cannot be unique", errors=[{"path": "options.unique", "message": "not supported"}]
        )
    batch_id = str(uuid.uuid4())
    now, rid = datetime.now(UTC), request_id(request)
    emails = _registry(request)["emails"]
    template = new_job(req, spec=emails, worker=emails.worker, args={}, tenant_id=tenant_id, rid=rid, now=now)
    jobs = [
        NewJob(
            queue=template.queue,
            worker=template.worker,
            tenant_id=tenant_id,
            args=args,
            meta={**template.meta, "batchId": batch_id},
            tags=template.tags,
            priority=template.priority,
            max_attempts=template.max_attempts,
            scheduled_at=template.scheduled_at,
            batch_id=batch_id,
        )
        for args in expand_bulk(req)
    ]

    async def insert(conn: Conn) -> tuple[int, Any]:
        with refusals_answered(template.meta, *(job.args for job in jobs)):
            ids = await batch_store.insert_batch_with_jobs(
                conn, batch_id=batch_id, tenant_id=tenant_id, jobs=jobs, callback_url=req.callback_url, request_id=rid
            )
        return 201, {"batchId": batch_id, "count": len(ids), "jobIds": ids}

    return await idempotency.respond(request, pool, tenant_id=tenant_id, body=body, create=insert)


def _job_id(request: Request) -> int:
    raw = request.path_params["job_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("no such job")
    return int(raw)


async def get_job(request: Request) -> Response:
    """GET /jobs/{id}: the job, outputs with fresh presigned URLs; 404 for other tenants' jobs.

    With `?wait=N` (0..60) it answers once the job is final, or after N seconds as it is then.
    """
    principal = authenticate(request, "jobs:read")
    _, pool = _state(request)
    job_id, tenant = _job_id(request), reading_tenant(principal)
    wait = events.wait_seconds(request)
    if wait:
        job = await events.wait_for_final(events.hub_of(request), pool, job_id, tenant, wait)
    else:
        async with pool.connection() as conn:
            job = await job_store.get_job(conn, job_id, tenant_id=tenant)
    if job is None:
        raise NotFound("no such job")
    result = job.result
    if isinstance(result, dict) and result.get("outputs"):
        from shared.outputs import presign_outputs

        storage = request.app.state.storage().for_tenant(job.tenant_id)
        result = presign_outputs(result, storage=storage, job_id=job.id, claim_token=job.claim_token)
    return JSONResponse(job_json(job, result=result))


async def get_job_events(request: Request) -> Response:
    """GET /jobs/{id}/events: the job's events as Server-Sent Events, until it is final."""
    return await events.stream_job_events(request, _job_id(request))


JOB_ID_MAX = 2**63 - 1  # bigint: a larger id cannot exist, and Postgres would refuse the parameter


class ListQuery(CamelModel):
    queue: str | None = Field(None, max_length=64)
    state: list[JobState] | None = None
    worker: str | None = Field(None, max_length=128)
    batch_id: str | None = Field(None, max_length=64)
    tag: str | None = Field(None, max_length=64)
    limit: Annotated[int, Field(ge=1, le=200), INTEGER_TEXT] = 50
    cursor: Annotated[int, Field(ge=1, le=JOB_ID_MAX), INTEGER_TEXT] | None = None


async def list_jobs(request: Request) -> Response:
    """GET /jobs: the tenant's jobs, newest first, with a cursor to the next page."""
    principal = authenticate(request, "jobs:read")
    _, pool = _state(request)
    query = parse_query(ListQuery, single_params(request, "state"))
    criteria = JobFilter(
        tenant_id=reading_tenant(principal),
        queue=query.queue,
        states=[s.value for s in query.state] if query.state else None,
        worker=query.worker,
        batch_id=query.batch_id,
        tag=query.tag,
    )
    async with pool.connection() as conn:
        jobs = await job_store.list_jobs(conn, criteria, limit=query.limit, before_id=query.cursor)
    next_cursor = str(jobs[-1].id) if len(jobs) == query.limit else None
    return JSONResponse({"jobs": [job_json(j) for j in jobs], "nextCursor": next_cursor})


def _not_bool(value: object) -> object:
    # JSON `false`/`true` would otherwise pass as the ids 0 and 1.
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    return value


# The bounds first, so the document shows them as minimum/maximum (http.INTEGER_TEXT); the
# digits check matters in the query only (a body's ids are JSON numbers).
JobId = Annotated[int, Field(ge=1, le=JOB_ID_MAX), BeforeValidator(_not_bool), INTEGER_TEXT]


class CancelCriteria(CamelModel):
    ids: list[JobId] | None = Field(None, max_length=1000)
    queue: str | None = Field(None, max_length=64)
    worker: str | None = Field(None, max_length=128)
    state: list[JobState] | None = None
    batch_id: str | None = Field(None, max_length=64)


async def cancel_jobs(request: Request) -> Response:
    """DELETE /jobs: cancel matching jobs of the tenant; running ones stop within a heartbeat."""
    settings, pool = _state(request)
    principal = authenticate(request, "jobs:write")
    if request.headers.get("content-length", "0") not in ("", "0") or request.headers.get("transfer-encoding"):
        if request.query_params:
            raise ValidationFailed(
                "give the criteria in the query or in the body, not both",
                errors=[{"path": "", "message": "query parameters and a body were both given"}],
            )
        body = await read_json_body(request, max_bytes=settings.max_body_bytes)
        criteria = parse_model(CancelCriteria, body)
    else:
        criteria = parse_query(CancelCriteria, single_params(request, "ids", "state"))
    if not criteria.model_dump(exclude_none=True):
        raise ValidationFailed(
            "name at least one criterion", errors=[{"path": "", "message": "give ids, queue, worker, state or batchId"}]
        )
    job_filter = JobFilter(
        tenant_id=reading_tenant(principal),
        ids=criteria.ids,
        queue=criteria.queue,
        worker=criteria.worker,
        states=[s.value for s in criteria.state] if criteria.state else None,
        batch_id=criteria.batch_id,
    )
    return JSONResponse({"cancelled": await cancel_matching(pool, job_filter)})


async def cancel_matching(pool: Pool, job_filter: JobFilter) -> int:
    """Cancel the unfinished jobs `job_filter` matches (API and dashboard); how many were cancelled."""
    async with pool.connection() as conn, conn.transaction():
        cancelled = await transitions.cancel(conn, job_filter)
        await _after_cancel(conn, cancelled)
    return len(cancelled)


async def _after_cancel(conn: Conn, cancelled: list[transitions.CancelledJob]) -> None:
    """Ask the dispatcher to stop the machines of cancelled running jobs (callbacks are enqueued
    by the database with the cancel itself)."""
    machines = {c.attempted_by for c in cancelled if c.was == "executing" and c.attempted_by}
    if machines:
        await notify(conn, CONTROL_CHANNEL, stop_machines_message(machines))


async def retry_job(request: Request) -> Response:
    """POST /jobs/{id}/retry: a discarded or cancelled job made available again."""
    principal = authenticate(request, "jobs:write")
    _, pool = _state(request)
    job = await retry_one(pool, _job_id(request), tenant=reading_tenant(principal))
    return JSONResponse(job_json(job))


async def retry_one(pool: Pool, job_id: int, *, tenant: str | None) -> Job:
    """Make a discarded or cancelled job available again (API and dashboard).

    NotFound for a missing job or another tenant's; Conflict for any other state or a held unique key.
    """
    async with pool.connection() as conn:
        try:
            job = await transitions.retry_final(conn, job_id, tenant_id=tenant)
        except UniqueKeyHeld as held:
            # The holder has the same tenant: the tenant is part of every unique key.
            extra = {"holdingJobId": held.holder_id} if held.holder_id else {}
            raise Conflict(f"another live job holds this job's unique key: {held}", extra=extra) from None
        if job is None:
            existing = await job_store.get_job(conn, job_id, tenant_id=tenant)
            if existing is None:
                raise NotFound("no such job")
            if existing.workflow_id is not None and existing.state.value in ("discarded", "cancelled"):
                raise Conflict(
                    f"this job is a step of workflow {existing.workflow_id}: retry the workflow "
                    f"(POST /workflows/{existing.workflow_id}/retry), so its dependencies are waited for"
                )
            raise Conflict(f"only discarded or cancelled jobs can be retried; this one is {existing.state.value}")
    return job
