"""One job described inside a larger body (`POST /jobs/batch`, a workflow step): `{"queue": ...,
...the body POST /jobs/{queue} takes}`, validated by that function's own model, errors prefixed
with the item's path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from shared.db.models import NewJob
from shared.errors import ProblemError, ValidationFailed
from shared.functions import Registry
from shared.schemas.common import JobRequest
from shared.schemas.default import DefaultRequest
from shared.settings import Settings

from .batch_insert import refusals_answered
from .http import parse_model
from .jobs import _default_args as default_args
from .jobs import new_job


def _prefixed(exc: ProblemError, path: str) -> ProblemError:
    errors = [{**e, "path": f"{path}.{e['path']}" if e.get("path") else path} for e in (exc.errors or [])]
    refusal = type(exc)(exc.detail, errors=errors)
    refusal.__cause__ = exc
    return refusal


def parse_item(
    registry: Registry,
    item: dict[str, Any],
    *,
    path: str,
    settings: Settings,
    tenant_id: str,
    exclude: tuple[str, ...] = (),
) -> tuple[JobRequest, str, str, dict[str, Any]]:
    """(request, queue, worker, args) of one item; 422 naming `path` when it is not valid.

    `exclude` names fields of the item that the caller reads itself (a step's `name`); `tenantId`
    is always refused (the enclosing body names the tenant).
    """
    queue = item.get("queue")
    spec = registry.get(queue) if isinstance(queue, str) else None
    if spec is None:
        raise ValidationFailed(
            "the request body is not valid",
            errors=[{"path": f"{path}.queue", "message": f"must be one of: {', '.join(sorted(registry))}"}],
        )
    if "tenantId" in item:
        raise ValidationFailed(
            "the request body is not valid",
            errors=[{"path": f"{path}.tenantId", "message": "give tenantId once, at the top of the body"}],
        )
    body = {name: value for name, value in item.items() if name != "queue" and name not in exclude}
    try:
        req = parse_model(spec.request, orjson.dumps(body), context={"settings": settings, "tenant_id": tenant_id})
        if isinstance(req, DefaultRequest):
            worker, args = req.function, default_args(req)
        else:
            worker, args = spec.worker, req.function_args()
    except ProblemError as exc:
        raise _prefixed(exc, path) from None
    return req, queue, worker, args  # type: ignore[return-value]


def item_job(
    registry: Registry,
    item: dict[str, Any],
    *,
    path: str,
    settings: Settings,
    tenant_id: str,
    rid: str,
    now: datetime,
    exclude: tuple[str, ...] = (),
    allow_unique: bool = False,
) -> NewJob:
    """The row to insert for one item."""
    return item_request_and_job(
        registry,
        item,
        path=path,
        settings=settings,
        tenant_id=tenant_id,
        rid=rid,
        now=now,
        exclude=exclude,
        allow_unique=allow_unique,
    )[1]


def item_request_and_job(
    registry: Registry,
    item: dict[str, Any],
    *,
    path: str,
    settings: Settings,
    tenant_id: str,
    rid: str,
    now: datetime,
    exclude: tuple[str, ...] = (),
    allow_unique: bool = False,
) -> tuple[JobRequest, NewJob]:
    """The validated request of one item and the row to insert for it."""
    req, queue, worker, args = parse_item(
        registry, item, path=path, settings=settings, tenant_id=tenant_id, exclude=exclude
    )
    if req.options.unique is not None and not allow_unique:
        raise ValidationFailed(
            "jobs posted together cannot be unique",
            errors=[{"path": f"{path}.options.unique", "message": "not supported here"}],
        )
    with refusals_answered(args, req.options.meta):
        job = new_job(req, spec=registry[queue], worker=worker, args=args, tenant_id=tenant_id, rid=rid, now=now)
    return req, job
