"""Schedules of a tenant: create, list, read, pause, resume, delete. The dispatcher's leader
inserts their jobs (functions/dispatcher/scheduler.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared import schedules
from shared.db import schedule_store
from shared.db.schedule_store import Schedule
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.functions import Registry
from shared.schemas.schedules import ScheduleRequest

from .auth import acting_tenant, authenticate, reading_tenant
from .http import JSONResponse, parse_model, read_json_body, request_id
from .job_items import item_job
from .presenters import rfc3339


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": str(schedule.id),
        "tenantId": schedule.tenant_id,
        "name": schedule.name,
        "cron": schedule.cron,
        "timeZone": schedule.time_zone,
        "misfire": schedule.misfire,
        "paused": schedule.paused,
        "nextRunAt": rfc3339(schedule.next_run_at),
        "lastRunAt": rfc3339(schedule.last_run_at),
        "job": {
            "queue": schedule.queue,
            "worker": schedule.worker,
            "args": schedule.args,
            "priority": schedule.priority,
            "maxAttempts": schedule.max_attempts,
            "tags": schedule.tags,
            "meta": schedule.meta,
        },
        "insertedAt": rfc3339(schedule.inserted_at),
    }


async def create_schedule(request: Request) -> Response:
    """POST /schedules: 201 with the schedule and its first occurrence; 409 for a taken name."""
    settings, pool = request.app.state.settings, request.app.state.pool
    registry: Registry = request.app.state.registry
    principal = authenticate(request, "jobs:write")
    body = await read_json_body(request, max_bytes=settings.max_body_bytes)
    req = parse_model(ScheduleRequest, body, context={"settings": settings})
    tenant_id = acting_tenant(principal, req.tenant_id)
    options = req.job.get("options")
    for name in ("scheduledAt", "scheduleIn"):
        if isinstance(options, dict) and name in options:
            raise ValidationFailed(
                "the request body is not valid",
                errors=[{"path": f"job.options.{name}", "message": "a schedule decides when its jobs run"}],
            )
    now = datetime.now(UTC)
    job = item_job(
        registry, req.job, path="job", settings=settings, tenant_id=tenant_id, rid=request_id(request), now=now
    )
    meta = {name: value for name, value in job.meta.items() if name != "requestId"}
    async with pool.connection() as conn:
        schedule = await schedule_store.insert_schedule(
            conn,
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            name=req.name,
            cron=req.cron,
            time_zone=req.time_zone,
            queue=job.queue,
            worker=job.worker,
            args=job.args,
            meta=meta,
            tags=job.tags,
            priority=job.priority,
            max_attempts=job.max_attempts,
            misfire=req.misfire,
            next_run_at=schedules.next_after(req.cron, req.time_zone, now),
        )
        if schedule is None:
            raise Conflict(f"this tenant already has a schedule named {req.name!r}")
        if req.paused:
            schedule = await schedule_store.set_paused(
                conn, schedule.id, tenant_id=tenant_id, paused=True, next_run_at=None
            )
    assert schedule is not None
    return JSONResponse(schedule_json(schedule), status_code=201)


def _schedule_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["id"])
    except ValueError:
        raise NotFound("no such schedule") from None


async def list_schedules(request: Request) -> Response:
    """GET /schedules: the tenant's schedules by name."""
    principal = authenticate(request, "jobs:read")
    async with request.app.state.pool.connection() as conn:
        found = await schedule_store.list_schedules(conn, tenant_id=reading_tenant(principal))
    return JSONResponse({"schedules": [schedule_json(s) for s in found]})


async def get_schedule(request: Request) -> Response:
    """GET /schedules/{id}; 404 for another tenant's."""
    principal = authenticate(request, "jobs:read")
    async with request.app.state.pool.connection() as conn:
        schedule = await schedule_store.get_schedule(conn, _schedule_id(request), tenant_id=reading_tenant(principal))
    if schedule is None:
        raise NotFound("no such schedule")
    return JSONResponse(schedule_json(schedule))


async def _set_paused(request: Request, *, paused: bool) -> Response:
    principal = authenticate(request, "jobs:write")
    schedule_id, tenant = _schedule_id(request), reading_tenant(principal)
    async with request.app.state.pool.connection() as conn:
        schedule = await schedule_store.get_schedule(conn, schedule_id, tenant_id=tenant)
        if schedule is None:
            raise NotFound("no such schedule")
        # Resuming starts from the next occurrence: what came due while paused is not run.
        upcoming = None if paused else schedules.next_after(schedule.cron, schedule.time_zone, datetime.now(UTC))
        updated = await schedule_store.set_paused(
            conn, schedule_id, tenant_id=tenant, paused=paused, next_run_at=upcoming
        )
    if updated is None:
        raise NotFound("no such schedule")
    return JSONResponse(schedule_json(updated))


async def pause_schedule(request: Request) -> Response:
    """POST /schedules/{id}/pause."""
    return await _set_paused(request, paused=True)


async def resume_schedule(request: Request) -> Response:
    """POST /schedules/{id}/resume: runs again from its next occurrence after now."""
    return await _set_paused(request, paused=False)


async def delete_schedule(request: Request) -> Response:
    """DELETE /schedules/{id}: no more jobs from it (the jobs it inserted stay)."""
    principal = authenticate(request, "jobs:write")
    async with request.app.state.pool.connection() as conn:
        deleted = await schedule_store.delete_schedule(conn, _schedule_id(request), tenant_id=reading_tenant(principal))
    if not deleted:
        raise NotFound("no such schedule")
    return JSONResponse({"deleted": True})


async def schedule_item(request: Request) -> Response:
    """GET and DELETE /schedules/{id} share one route, so a 405 there lists both in `Allow`."""
    if request.method == "DELETE":
        return await delete_schedule(request)
    return await get_schedule(request)


async def schedules_collection(request: Request) -> Response:
    """GET and POST /schedules share one route."""
    if request.method == "POST":
        return await create_schedule(request)
    return await list_schedules(request)
