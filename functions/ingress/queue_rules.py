"""Admin endpoints for a queue's claim rules: fairness between tenants, per-tenant caps and
weights, and the rate limit per key (PUT/GET /admin/queues/{name}/limits), and the per-tenant
figures GET /admin/queues/{name} shows. The rules are applied by the claim itself, fleet-wide."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from shared.db import queue_rules
from shared.db.pool import Pool
from shared.db.queue_rules import QueueRules, RateLimit, TenantOverride, TenantStats
from shared.errors import NotFound, ValidationFailed
from shared.functions import Registry
from shared.notify import JOBS_CHANNEL, notify
from shared.schemas.common import CamelModel, TenantId
from shared.settings import Settings

from .auth import authenticate
from .http import JSONResponse, parse_model, read_json_body

logger = logging.getLogger("functions.ingress.queue_rules")

TOP_TENANTS = 20  # tenants listed by GET /admin/queues/{name}; the rest are summed as `other`
MAX_TENANT_RULES = 1000


class TenantRule(CamelModel):
    # strict: JSON `false` must not quietly become a cap of 0 and stop a tenant.
    limit: int | None = Field(
        None, ge=0, le=1000, strict=True, description="most jobs this tenant runs at once (0 holds it)"
    )
    weight: int | None = Field(None, ge=1, le=100, strict=True, description="turns per round (default 1)")


class RateLimitRule(CamelModel):
    limit: int = Field(..., ge=1, le=1000, strict=True, description="most starts per key within any period")
    period_seconds: float = Field(1.0, ge=0.01, le=86_400, description="the sliding window, in seconds")
    key: Literal["tenant", "function"] = Field(
        "tenant", description="`tenant`, or `function`: the key the function derives from a job (its `derivedFrom`)"
    )


class LimitsBody(CamelModel):
    """A queue's claim rules; PUT replaces them all (a field left out takes its default)."""

    fair: bool = Field(True, strict=True, description="tenants take turns (false: priority, then time)")
    tenant_limit: int | None = Field(
        None, ge=0, le=1000, strict=True, description="most jobs any one tenant runs at once (null: no cap)"
    )
    rate_limit: RateLimitRule | None = None
    tenants: dict[TenantId, TenantRule] = Field(
        default_factory=dict, max_length=MAX_TENANT_RULES, description="per-tenant cap and weight, by tenant id"
    )


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def _rate_key(body: RateLimitRule, registry: Registry, queue: str) -> str:
    """The stored key rule: 'tenant', or the function's own derivation (422 when it has none)."""
    if body.key == "tenant":
        return "tenant"
    spec = registry.get(queue)
    if spec is None or spec.rate_key is None:
        raise ValidationFailed(
            "the request body is not valid",
            errors=[{"path": "rateLimit.key", "message": f"function {queue!r} derives no rate key; use 'tenant'"}],
        )
    return spec.rate_key


def limits_json(rules: QueueRules) -> dict[str, Any]:
    rate = rules.rate_limit
    return {
        "fair": rules.fair,
        "tenantLimit": rules.tenant_limit,
        "rateLimit": None
        if rate is None
        else {
            "limit": rate.limit,
            "periodSeconds": rate.period_seconds,
            "key": "tenant" if rate.key == "tenant" else "function",
            "derivedFrom": None if rate.key == "tenant" else rate.key,
        },
        "tenants": {
            tenant: {"limit": rule.max_running, "weight": rule.weight} for tenant, rule in sorted(rules.tenants.items())
        },
    }


def tenant_json(stats: TenantStats) -> dict[str, Any]:
    return {
        "tenantId": stats.tenant_id,
        "available": stats.due,
        "running": stats.running,
        "waiting": stats.waiting,
        "throttled": stats.throttled,
        "limit": stats.cap,
        "weight": stats.weight,
    }


async def limits(request: Request) -> Response:
    """GET or PUT /admin/queues/{name}/limits (one route, so a 405 lists both methods in Allow)."""
    return await (put_limits(request) if request.method == "PUT" else get_limits(request))


async def get_limits(request: Request) -> Response:
    authenticate(request, "admin")
    async with _pool(request).connection() as conn:
        rules = await queue_rules.read_rules(conn, request.path_params["name"])
    if rules is None:
        raise NotFound("no such queue")
    return JSONResponse(limits_json(rules))


async def put_limits(request: Request) -> Response:
    """Replace a queue's claim rules, fleet-wide and persisted: every claim reads them."""
    authenticate(request, "admin")
    settings: Settings = request.app.state.settings
    name = request.path_params["name"]
    body = parse_model(LimitsBody, await read_json_body(request, max_bytes=settings.max_body_bytes))
    rate = None
    if body.rate_limit is not None:
        registry: Registry = request.app.state.registry
        rate = RateLimit(
            limit=body.rate_limit.limit,
            period_seconds=body.rate_limit.period_seconds,
            key=_rate_key(body.rate_limit, registry, name),
        )
    rules = QueueRules(
        fair=body.fair,
        tenant_limit=body.tenant_limit,
        rate_limit=rate,
        tenants={
            tenant: TenantOverride(max_running=rule.limit, weight=rule.weight)
            for tenant, rule in body.tenants.items()
            if rule.limit is not None or rule.weight is not None
        },
    )
    async with _pool(request).connection() as conn:
        if not await queue_rules.write_rules(conn, name, rules):
            raise NotFound("no such queue")
        # Looser rules may let waiting jobs start: wake the queue's machines.
        await notify(conn, JOBS_CHANNEL, name)
        stored = await queue_rules.read_rules(conn, name)
    if stored is None:  # deleted meanwhile (queues are not deleted by the service)
        raise NotFound("no such queue")
    logger.info("queue limits set", extra={"queue": name, "fair": rules.fair, "tenant_rules": len(rules.tenants)})
    return JSONResponse(limits_json(stored))


async def queue_detail(pool: Pool, name: str) -> dict[str, Any] | None:
    """What GET /admin/queues/{name} adds to a queue's status: its rules, its busiest tenants (the
    rest as `other`) and its busiest rate keys."""
    async with pool.connection() as conn:
        rules = await queue_rules.read_rules(conn, name)
        if rules is None:
            return None
        stats = await queue_rules.tenant_stats(conn, name)
        windows = await queue_rules.rate_windows(conn, name)
    return {
        "limits": limits_json(rules),
        "tenants": [tenant_json(s) for s in queue_rules.top_tenants(stats, TOP_TENANTS)],
        "rateWindows": [{"key": key, "starts": starts} for key, starts in windows],
    }
