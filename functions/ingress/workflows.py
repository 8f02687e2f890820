"""Workflows: `POST /workflows` (steps that wait for each other, one transaction), `GET
/workflows/{id}` (every step's state), `POST /workflows/{id}/cancel` and `/retry`.

The ingress checks the shape (names, dependencies, no cycle, references only to steps a step
depends on) and each step's body with its function's own model; the database moves steps on as
their dependencies end (migrations/0008).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import Response

from shared.db import transitions, workflow_store
from shared.db.job_store import Conn, JobFilter
from shared.db.models import FINAL_STATES
from shared.db.workflow_store import NewStep
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.functions import Registry
from shared.schemas.workflows import STEP_FIELDS, STEP_NAME, Reference, WorkflowRequest, cycle, references
from shared.unique import unique_key

from . import idempotency
from .auth import acting_tenant, authenticate, reading_tenant
from .http import JSONResponse, parse_model, read_json_body, request_id
from .job_items import item_request_and_job
from .jobs import _after_cancel
from .presenters import rfc3339

_NAME = re.compile(STEP_NAME)


def _invalid(path: str, message: str) -> ValidationFailed:
    return ValidationFailed("the workflow is not valid", errors=[{"path": path, "message": message}])


def _shape(steps: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each step's dependencies by name; 422 for bad names, unknown or repeated dependencies, cycles."""
    names: list[str] = []
    for index, step in enumerate(steps):
        name = step.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _invalid(f"steps.{index}.name", "a step name is 1-64 letters, digits, _ or -")
        if name in names:
            raise _invalid(f"steps.{index}.name", f"two steps are named {name!r}")
        names.append(name)
    dependencies: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        deps = step.get("dependsOn", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise _invalid(f"steps.{index}.dependsOn", "a list of step names")
        for dep in deps:
            if dep not in names:
                raise _invalid(f"steps.{index}.dependsOn", f"no step named {dep!r}")
        if len(set(deps)) != len(deps):
            raise _invalid(f"steps.{index}.dependsOn", "a step is named twice")
        if not isinstance(step.get("runOnFailure", False), bool):
            raise _invalid(f"steps.{index}.runOnFailure", "true or false")
        dependencies[names[index]] = deps
    found = cycle(dependencies)
    if found is not None:
        raise _invalid("steps", f"the steps wait for each other in a cycle: {' -> '.join(found)}")
    return dependencies


def _placeholders(
    step: dict[str, Any], index: int, deps: list[str], tenant_id: str
) -> tuple[dict[str, Any], dict[str, Reference]]:
    """The step with each reference replaced by a storage-key-shaped placeholder (so its function's
    model can check everything else), and the placeholders' references."""
    body = {name: value for name, value in step.items() if name not in STEP_FIELDS}
    found: dict[str, Reference] = {}
    nonce = secrets.token_hex(16)
    for path, ref in list(references(body)):
        where = ".".join(str(part) for part in (f"steps.{index}", *path))
        if isinstance(ref, str):
            raise _invalid(where, ref)
        if ref.step not in deps:
            raise _invalid(where, f"refers to step {ref.step!r}, which this step does not depend on")
        # Unguessable, so no literal text of the request can be taken for a reference.
        placeholder = f"tenants/{tenant_id}/workflow-reference/{nonce}-{len(found)}"
        found[placeholder] = ref
        body = _replace_at(body, list(path), placeholder)
    return body, found


def _replace_at(value: Any, path: list[str | int], replacement: Any) -> Any:
    if not path:
        return replacement
    head, rest = path[0], path[1:]
    if isinstance(value, list) and isinstance(head, int):
        copy = list(value)
        copy[head] = _replace_at(value[head], rest, replacement)
        return copy
    return {**value, head: _replace_at(value[head], rest, replacement)}


def _restore(value: Any, found: dict[str, Reference], seen: set[str]) -> Any:
    """`value` (validated args) with each placeholder turned back into its reference."""
    if isinstance(value, str) and value in found:
        seen.add(value)
        ref = found[value]
        return {"$fromStep": ref.step, "output": ref.output}
    if isinstance(value, dict):
        return {name: _restore(item, found, seen) for name, item in value.items()}
    if isinstance(value, list):
        return [_restore(item, found, seen) for item in value]
    return value


async def create_workflow(request: Request) -> Response:
    """POST /workflows: every step a job, inserted in one transaction; 422 (nothing inserted) for an
    invalid step, an unknown dependency or a cycle; 409 when a step's unique key is held."""
    settings, pool = request.app.state.settings, request.app.state.pool
    registry: Registry = request.app.state.registry
    principal = authenticate(request, "jobs:write")
    body = await read_json_body(request, max_bytes=settings.bulk_max_body_bytes)
    req = parse_model(WorkflowRequest, body, context={"settings": settings})
    tenant_id = acting_tenant(principal, req.tenant_id)
    dependencies = _shape(req.steps)
    rid, now = request_id(request), datetime.now(UTC)
    steps: list[NewStep] = []
    for index, step in enumerate(req.steps):
        name = step["name"]
        deps = dependencies[name]
        checked, found = _placeholders(step, index, deps, tenant_id)
        step_req, job = item_request_and_job(
            registry,
            checked,
            path=f"steps.{index}",
            settings=settings,
            tenant_id=tenant_id,
            rid=rid,
            now=now,
            allow_unique=True,
        )
        seen: set[str] = set()
        template = _restore(job.args, found, seen)
        if seen != set(found):
            raise _invalid(f"steps.{index}", "a reference stands where this function does not take a storage key")
        if step_req.options.unique is not None:
            # The key of the step as written (references, not the placeholders checked above).
            key = unique_key(
                step_req.options.unique, tenant_id=tenant_id, queue=job.queue, worker=job.worker, args=template, now=now
            )
            job = dataclasses.replace(job, unique_key=key)
        steps.append(
            NewStep(
                name=name,
                job=dataclasses.replace(job, args=template, scheduled_at=None if deps else job.scheduled_at),
                depends_on=deps,
                run_on_failure=bool(step.get("runOnFailure", False)),
                args_template=template,
                not_before=job.scheduled_at if deps else None,
            )
        )
    workflow_id = uuid.uuid4()

    async def insert(conn: Conn) -> tuple[int, Any]:
        async with conn.transaction():
            inserted = await workflow_store.insert_workflow(
                conn, workflow_id=workflow_id, tenant_id=tenant_id, name=req.name, steps=steps
            )
            if isinstance(inserted, str):
                raise Conflict(f"step {inserted!r}: another live job holds its unique key; nothing was created")
        view = await _view(conn, workflow_id, tenant_id)
        assert view is not None
        return 201, view

    return await idempotency.respond(request, pool, tenant_id=tenant_id, body=body, create=insert)


def _workflow_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["id"])
    except ValueError:
        raise NotFound("no such workflow") from None


def _overall(states: list[str | None]) -> str:
    if any(state is not None and state not in FINAL_STATES for state in states):
        return "running"
    if all(state in (None, "completed") for state in states):
        return "completed"
    return "failed" if "discarded" in states else "cancelled"


async def _view(conn: Conn, workflow_id: uuid.UUID, tenant_id: str | None) -> dict[str, Any] | None:
    workflow = await workflow_store.get_workflow(conn, workflow_id, tenant_id=tenant_id)
    if workflow is None:
        return None
    rows = await workflow_store.workflow_steps(conn, workflow_id)
    names = {row["job_id"]: row["name"] for row in rows}
    steps = [
        {
            "name": row["name"],
            "jobId": row["job_id"],
            "queue": row["queue"],
            "worker": row["worker"],
            "state": row["state"],
            "waiting": bool(row["waiting"]),
            "dependsOn": [names.get(dep, str(dep)) for dep in row["depends_on"]],
            "runOnFailure": row["run_on_failure"],
            "attempt": row["attempt"],
            "progress": row["progress"],
            "lastError": row["errors"][-1] if row["errors"] else None,
        }
        for row in rows
    ]
    states = [row["state"] for row in rows]
    counts: dict[str, int] = {}
    for state in states:
        counts[state or "pruned"] = counts.get(state or "pruned", 0) + 1
    return {
        "id": str(workflow["id"]),
        "tenantId": workflow["tenant_id"],
        "name": workflow["name"],
        "state": _overall(states),
        "counts": counts,
        "insertedAt": rfc3339(workflow["inserted_at"]),
        "steps": steps,
    }


async def get_workflow(request: Request) -> Response:
    """GET /workflows/{id}: the workflow and every step's state; 404 for another tenant's."""
    principal = authenticate(request, "jobs:read")
    async with request.app.state.pool.connection() as conn:
        view = await _view(conn, _workflow_id(request), reading_tenant(principal))
    if view is None:
        raise NotFound("no such workflow")
    return JSONResponse(view)


async def cancel_workflow(request: Request) -> Response:
    """POST /workflows/{id}/cancel: every unfinished step cancelled (running ones stop)."""
    principal = authenticate(request, "jobs:write")
    workflow_id, tenant = _workflow_id(request), reading_tenant(principal)
    async with request.app.state.pool.connection() as conn, conn.transaction():
        if await workflow_store.get_workflow(conn, workflow_id, tenant_id=tenant) is None:
            raise NotFound("no such workflow")
        ids = [row["job_id"] for row in await workflow_store.workflow_steps(conn, workflow_id)]
        cancelled = await transitions.cancel(conn, JobFilter(tenant_id=tenant, ids=ids))
        await _after_cancel(conn, cancelled)
    return JSONResponse({"cancelled": len(cancelled)})


async def retry_workflow(request: Request) -> Response:
    """POST /workflows/{id}/retry: every discarded or cancelled step tried again, waiting for the
    steps it depends on; 409 when a step's unique key is now held by another live job."""
    principal = authenticate(request, "jobs:write")
    workflow_id, tenant = _workflow_id(request), reading_tenant(principal)
    async with request.app.state.pool.connection() as conn:
        if await workflow_store.get_workflow(conn, workflow_id, tenant_id=tenant) is None:
            raise NotFound("no such workflow")
        try:
            async with conn.transaction():
                retried = await workflow_store.retry_workflow(conn, workflow_id)
        except psycopg.errors.UniqueViolation:
            raise Conflict("a step's unique key is now held by another live job; nothing was retried") from None
        view = await _view(conn, workflow_id, tenant)
    return JSONResponse({"retried": retried, "workflow": view})
