"""Dashboard: the jobs list and the overview on a table of 1,000,000 jobs, p99 through HTTP.

Ours: the ingress under uvicorn (as in the ingress metric), a signed-in dashboard session, pages
requested one after another over loopback: the overview (`/dashboard`) and the jobs list
(`/dashboard/jobs`) with the filters people use (none, a state, a queue, a page further), for one
tenant and for an admin across tenants. The table: `n` jobs over a week, 50 tenants, seven queues,
final jobs (95 % completed) except among the newest 2 %, three quarters of which are still to run
(bench/queries.sql dashboard_fill_jobs), then VACUUM ANALYZE, as autovacuum would have done on a
table that old.

Reference: the same pages' SQL alone (list_jobs / the overview's three queries) run with psycopg on
one connection, so the ratio is what rendering HTML and HTTP add on top of the database's work.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg

from functions.ingress.dashboard.overview import outcome_params
from functions.ingress.dashboard.sql import QUERIES as DASHBOARD_QUERIES
from shared.db.sql import QUERIES as DB_QUERIES

from .harness import QUERIES, BenchConfig, BenchEnv, Row, Spread, app_server, percentile, token, verdict

NAME = "dashboard"
P99_TARGET_MS = 50.0
TENANTS = 50
WEEK = 7 * 24 * 3600


def fill_jobs(database_url: str, n: int, *, tenants: int = TENANTS) -> None:
    """`n` jobs of a week's history (see the module doc), then VACUUM ANALYZE."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(QUERIES["dashboard_fill_jobs"], {"n": n, "tenants": tenants, "span_seconds": WEEK})
        # Flushed first: VACUUM marks a page all-visible (what index-only scans rely on) only once
        # its inserts' commit is on disk, as autovacuum finds it on a table a week old.
        conn.execute("CHECKPOINT")
        conn.execute("VACUUM ANALYZE jobs")


def list_params(tenant: str | None, **filters: Any) -> dict[str, Any]:
    """Parameters of list_jobs as the dashboard's jobs page passes them."""
    params: dict[str, Any] = {
        "tenant_id": tenant,
        "queue": None,
        "states": None,
        "worker": None,
        "batch_id": None,
        "tag": None,
        "before_id": None,
        "limit": 50,
    }
    params.update(filters)
    return params


def overview_queries(tenant: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The overview's statements and parameters (dashboard/overview.py)."""
    return [
        (DASHBOARD_QUERIES["dashboard_queues"], {}),
        (DASHBOARD_QUERIES["dashboard_live_counts"], {"tenant_id": tenant}),
        (DASHBOARD_QUERIES["dashboard_recent_outcomes"], outcome_params(tenant, datetime.now(UTC))),
    ]


def _pages(middle_id: int) -> list[str]:
    return [
        "/dashboard",
        "/dashboard/jobs",
        "/dashboard/jobs?state=discarded",
        "/dashboard/jobs?state=available",
        "/dashboard/jobs?queue=images",
        f"/dashboard/jobs?cursor={middle_id}",
    ]


def _sign_in(url: str, bearer: str) -> httpx.Client:
    client = httpx.Client(base_url=url, trust_env=False, timeout=30, headers={"Origin": url})
    form = client.get("/dashboard/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    answer = client.post("/dashboard/login", data={"csrf": csrf.group(1), "token": bearer, "next": "/dashboard"})
    if answer.status_code != 303:
        raise RuntimeError(f"dashboard sign-in failed: {answer.status_code}")
    return client


def _http_latencies(client: httpx.Client, paths: list[str], rounds: int) -> list[float]:
    for path in paths:  # warm-up: connections, prepared statements, caches
        client.get(path).raise_for_status()
    out = []
    for _ in range(rounds):
        for path in paths:
            t0 = time.perf_counter()
            response = client.get(path)
            out.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code}")
    return out


def _sql_latencies(database_url: str, tenant: str | None, middle_id: int, rounds: int) -> list[float]:
    lists = [
        list_params(tenant),
        list_params(tenant, states=["discarded"]),
        list_params(tenant, states=["available"]),
        list_params(tenant, queue="images"),
        list_params(tenant, before_id=middle_id),
    ]
    statements = [(overview_queries(tenant),)] + [([(DB_QUERIES["list_jobs"], p)],) for p in lists]  # one per page
    out = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(rounds + 1):
            for (page,) in statements:
                t0 = time.perf_counter()
                for query, params in page:
                    conn.execute(query, params).fetchall()
                out.append((time.perf_counter() - t0) * 1000)
    return out[len(statements) :]  # the first round warmed up


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    n = cfg.n(1_000_000, 20_000)
    rounds = cfg.n(60, 3)
    database_url = env.database("dashboard")
    t0 = time.monotonic()
    fill_jobs(database_url, n)
    fill_seconds = time.monotonic() - t0
    middle_id = n // 2
    # The dashboard counts its pages in the tenant's request budget (600/min by default): the rounds
    # below would be answered 429 after a minute. The limiter still runs, out of reach.
    settings = env.settings(database_url, rate_limit_per_minute=100_000_000)
    rows: list[Row] = []
    with app_server(env, settings) as url:
        for who, tenant, scopes in [("one tenant", "tenant-7", "jobs:read"), ("admin, every tenant", None, "admin")]:
            ours99: list[float] = []
            ref99: list[float] = []
            for _ in range(cfg.runs):
                client = _sign_in(url, token(settings, tenant=tenant, scopes=scopes))  # type: ignore[arg-type]
                try:
                    ours99.append(percentile(_http_latencies(client, _pages(middle_id), rounds), 99))
                finally:
                    client.close()
                ref99.append(percentile(_sql_latencies(database_url, tenant, middle_id, rounds), 99))
            ours, ref = Spread.of(ours99), Spread.of(ref99)
            rows.append(
                Row(
                    f"dashboard overview + jobs list, {who}, p99 ({n:,} jobs)",
                    ours.fmt(" ms", 1),
                    ref.fmt(" ms", 1) + " (the pages' SQL alone)",
                    f"{ours.median / ref.median:.2f}x",
                    f"≤ {P99_TARGET_MS:g} ms",
                    verdict(ours.median <= P99_TARGET_MS),
                    f"{rounds} rounds of {len(_pages(middle_id))} pages per run (overview; list: no filter, "
                    "state=discarded, state=available, queue=images, a cursor half-way), one request at a time "
                    f"over loopback; table filled in {fill_seconds:.0f} s and VACUUM ANALYZEd"
                    if who == "one tenant"
                    else "",
                )
            )
    return rows
