"""A queue's claim rules (fairness, per-tenant caps and weights, rate limit) and the per-tenant
figures that show them at work. The rules themselves are applied by `claim_jobs` (migration 0007)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .job_store import Conn
from .sql import QUERIES


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most `limit` starts per key within any `period_seconds`; `key` is 'tenant',
    'host:<arg>' or 'domain:<arg>' (derived from the job's args)."""

    limit: int
    period_seconds: float
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantOverride:
    max_running: int | None = None  # None: the queue's default cap
    weight: int | None = None  # None: 1


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRules:
    fair: bool
    tenant_limit: int | None  # the default cap per tenant; None: only the queue's limit
    rate_limit: RateLimit | None
    tenants: Mapping[str, TenantOverride]


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantStats:
    """One tenant's jobs in one queue now."""

    queue: str
    tenant_id: str
    due: int  # available and due
    running: int
    waiting: int  # scheduled or retryable
    throttled: int  # due but held back now by the tenant's cap or full rate window
    cap: int | None
    weight: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TenantStats:
        return cls(
            queue=row["queue"],
            tenant_id=row["tenant_id"],
            due=int(row["due"]),
            running=int(row["running"]),
            waiting=int(row["waiting"]),
            throttled=int(row["throttled"]),
            cap=row["cap"],
            weight=row["weight"] or 1,
        )


async def read_rules(conn: Conn, name: str) -> QueueRules | None:
    """The rules of queue `name`; None when there is no such queue."""
    cur = await conn.execute(QUERIES["queue_limits"], {"name": name})
    row = await cur.fetchone()
    if row is None:
        return None
    rate = None
    if row["rate_limit"] is not None:
        rate = RateLimit(limit=row["rate_limit"], period_seconds=row["rate_period_seconds"], key=row["rate_key"])
    cur = await conn.execute(QUERIES["queue_tenant_overrides"], {"name": name})
    tenants = {
        r["tenant_id"]: TenantOverride(max_running=r["max_running"], weight=r["weight"]) for r in await cur.fetchall()
    }
    return QueueRules(fair=row["fair"], tenant_limit=row["tenant_limit"], rate_limit=rate, tenants=tenants)


async def write_rules(conn: Conn, name: str, rules: QueueRules) -> bool:
    """Replace the rules of queue `name` in one transaction; False when there is no such queue."""
    rate = rules.rate_limit
    async with conn.transaction():
        cur = await conn.execute(
            QUERIES["set_queue_limits"],
            {
                "name": name,
                "fair": rules.fair,
                "tenant_limit": rules.tenant_limit,
                "rate_limit": rate.limit if rate else None,
                "rate_period_seconds": rate.period_seconds if rate else None,
                "rate_key": rate.key if rate else None,
            },
        )
        if await cur.fetchone() is None:
            return False
        await conn.execute(QUERIES["clear_tenant_overrides"], {"name": name})
        overrides = sorted(rules.tenants.items())
        if overrides:
            await conn.execute(
                QUERIES["set_tenant_overrides"],
                {
                    "name": name,
                    "tenant_ids": [tenant for tenant, _ in overrides],
                    "weights": [o.weight for _, o in overrides],
                    "max_running": [o.max_running for _, o in overrides],
                },
            )
    return True


async def tenant_stats(conn: Conn, name: str | None = None) -> list[TenantStats]:
    """Per queue (or only `name`) and tenant with live jobs, busiest first within each queue."""
    cur = await conn.execute(QUERIES["queue_tenant_stats"], {"name": name})
    return [TenantStats.from_row(row) for row in await cur.fetchall()]


async def rate_windows(conn: Conn, name: str, *, limit: int = 20) -> list[tuple[str, int]]:
    """The busiest rate keys of queue `name`: (key, starts within the current window)."""
    cur = await conn.execute(QUERIES["queue_rate_windows"], {"name": name, "limit": limit})
    return [(row["key"], int(row["starts"])) for row in await cur.fetchall()]


async def prune_bookkeeping(conn: Conn) -> int:
    """Delete expired rate windows and idle tenant rows without rules; returns how many."""
    cur = await conn.execute(QUERIES["prune_claim_bookkeeping"])
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


OTHER = "other"  # the label of every tenant beyond the busiest ones


def top_tenants(stats: Sequence[TenantStats], top: int) -> list[TenantStats]:
    """The `top` busiest tenants of one queue's `stats` (busiest first), the rest summed as one
    tenant named `other`, so labels and listings stay bounded however many tenants there are."""
    head, rest = list(stats[:top]), stats[top:]
    if rest:
        head.append(
            TenantStats(
                queue=rest[0].queue,
                tenant_id=OTHER,
                due=sum(s.due for s in rest),
                running=sum(s.running for s in rest),
                waiting=sum(s.waiting for s in rest),
                throttled=sum(s.throttled for s in rest),
                cap=None,
                weight=1,
            )
        )
    return head
