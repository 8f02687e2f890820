"""Admin endpoints (token with the `admin` scope) and the unauthenticated health check."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from shared.db import job_store, transitions
from shared.db.pool import Pool
from shared.errors import NotFound
from shared.notify import JOBS_CHANNEL, notify
from shared.schemas.common import CamelModel
from shared.settings import Settings
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

from . import queue_rules
from .auth import authenticate
from .http import INTEGER_TEXT, JSONResponse, parse_model, parse_query, read_json_body, single_params
from .presenters import machine_json, queue_json

logger = logging.getLogger("functions.ingress.admin")


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


async def _queue_or_404(request: Request) -> Response:
    name = request.path_params["name"]
    async with _pool(request).connection() as conn:
        statuses = await job_store.queue_statuses(conn, name)
    if not statuses:
        raise NotFound(f"no queue {name!r}")
    return JSONResponse(queue_json(statuses[0]))


async def list_queues(request: Request) -> Response:
    authenticate(request, "admin")
    async with _pool(request).connection() as conn:
        statuses = await job_store.queue_statuses(conn)
    return JSONResponse([queue_json(s) for s in statuses])


async def get_queue(request: Request) -> Response:
    """The queue's status, its claim rules, its busiest tenants and rate keys."""
    authenticate(request, "admin")
    name = request.path_params["name"]
    async with _pool(request).connection() as conn:
        statuses = await job_store.queue_statuses(conn, name)
    detail = await queue_rules.queue_detail(_pool(request), name)
    if not statuses or detail is None:
        raise NotFound(f"no queue {name!r}")
    return JSONResponse({**queue_json(statuses[0]), **detail})


async def pause_queue(request: Request) -> Response:
    """Pause fleet-wide: the flag lives in `queues`, which every claim reads."""
    authenticate(request, "admin")
    await pause(_pool(request), request.path_params["name"])
    return await _queue_or_404(request)


async def resume_queue(request: Request) -> Response:
    authenticate(request, "admin")
    await resume(_pool(request), request.path_params["name"])
    return await _queue_or_404(request)


class ScaleBody(CamelModel):
    # strict: JSON `false` must not quietly become a limit of 0 and stop the queue.
    limit: int = Field(..., ge=0, le=1000, strict=True)


async def scale_queue(request: Request) -> Response:
    authenticate(request, "admin")
    settings: Settings = request.app.state.settings
    body = parse_model(ScaleBody, await read_json_body(request, max_bytes=settings.max_body_bytes))
    await scale(_pool(request), request.path_params["name"], body.limit)
    return await _queue_or_404(request)


# Queue control shared by the API above and the dashboard; each raises NotFound for an unknown queue.


async def pause(pool: Pool, name: str) -> None:
    async with pool.connection() as conn:
        if not await job_store.set_queue_paused(conn, name, paused=True):
            raise NotFound("no such queue")
    emit(EventName.QUEUE_PAUSE, queue=name)


async def resume(pool: Pool, name: str) -> None:
    async with pool.connection() as conn:
        if not await job_store.set_queue_paused(conn, name, paused=False):
            raise NotFound("no such queue")
        await notify(conn, JOBS_CHANNEL, name)
    emit(EventName.QUEUE_RESUME, queue=name)


async def scale(pool: Pool, name: str, limit: int) -> None:
    async with pool.connection() as conn:
        if not await job_store.set_queue_limit(conn, name, limit=limit):
            raise NotFound("no such queue")
        await notify(conn, JOBS_CHANNEL, name)
    logger.info("queue scaled", extra={"queue": name, "limit": limit})


# Ten years: any longer is "never", and beyond what a Postgres interval holds it would fail.
_MAX_SECONDS = 10 * 365 * 24 * 3600

Seconds = Annotated[int, Field(ge=0, le=_MAX_SECONDS), INTEGER_TEXT]


class PruneQuery(CamelModel):
    max_age_seconds: Seconds | None = None


class RescueQuery(CamelModel):
    rescue_after_seconds: Seconds | None = None


async def prune_jobs(request: Request) -> Response:
    authenticate(request, "admin")
    settings: Settings = request.app.state.settings
    query = parse_query(PruneQuery, single_params(request))
    max_age = query.max_age_seconds if query.max_age_seconds is not None else settings.pruner_max_age
    total = 0
    async with _pool(request).connection() as conn:
        while pruned := await transitions.prune(conn, max_age_seconds=max_age):
            total += pruned
    return JSONResponse({"pruned": total})


async def rescue_jobs(request: Request) -> Response:
    authenticate(request, "admin")
    settings: Settings = request.app.state.settings
    query = parse_query(RescueQuery, single_params(request))
    after = query.rescue_after_seconds if query.rescue_after_seconds is not None else settings.lifeline_rescue_after
    async with _pool(request).connection() as conn:
        rescued = await transitions.rescue_stale(conn, rescue_after_seconds=after)
    return JSONResponse({"rescued": len(rescued)})


async def list_machines(request: Request) -> Response:
    authenticate(request, "admin")
    async with _pool(request).connection() as conn:
        machines = await job_store.recent_machines(conn, limit=200)
    return JSONResponse({"machines": [machine_json(m) for m in machines]})


async def health(request: Request) -> Response:
    """200 with database, dispatcher role, queues and alerts; 503 with the reason when the database is down."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    role = dispatcher.role if dispatcher is not None else "off"
    body: dict[str, Any] = {"status": "ok", "database": "ok", "dispatcher": role}
    try:
        async with _pool(request).connection(timeout=2.0) as conn:
            statuses = await job_store.queue_statuses(conn)
    except Exception as exc:
        body.update(status="unavailable", database="unreachable", reason=type(exc).__name__)
        return JSONResponse(body, status_code=503)
    body["queues"] = [queue_json(s) for s in statuses]
    # What needs a human now, e.g. the Fly launcher's alert while the API rejects FLY_API_TOKEN.
    launcher_alerts = getattr(getattr(dispatcher, "launcher", None), "alerts", None)
    if callable(launcher_alerts) and (alerts := launcher_alerts()):
        body["alerts"] = alerts
    return JSONResponse(body)
