"""Fair claims (issue 13): starvation and cost, each a ratio within one run.

Starvation: one `python -m functions.machine` (MACHINE_CONCURRENCY=10, queue limit 10) drains
tenant A's backlog of `echo` jobs (BENCH_STARVATION_SIZES, default 1,000, 10,000 and 100,000);
once it is under way tenant B enqueues 10 jobs. B's wait p99 (insert -> start) is measured with
fairness on and off (FIFO: the same engine, CLAIM_FAIRNESS=false). With fairness B's wait must
not grow with A's backlog (largest / smallest within 2x); FIFO makes B wait for the backlog.

Cost: the engine metric's drain (5,000 no-op jobs, one machine) with 100 tenants and fairness
on, against the same drain with one tenant and fairness off, run after run; ratio >= 0.9. Beside
it, not judged: FIFO over the same 100 tenants' jobs, which splits the cost of the fair claim
from the cost of many tenants' jobs.
"""

from __future__ import annotations

import os
import time

from psycopg.types.json import Jsonb

from .harness import (
    PYTHON,
    QUERIES,
    BenchConfig,
    BenchEnv,
    Row,
    Spread,
    checkpoint,
    percentile,
    sql_rows,
    stop_process,
    verdict,
    wait_until,
)

NAME = "fairness"
CONCURRENCY = 10
B_JOBS = 10
FLAT_TARGET = 2.0  # B's p99 at the largest backlog / at the smallest, fairness on
COST_TARGET = 0.9  # fair throughput (100 tenants) / FIFO throughput (one tenant)
COST_TENANTS = 100


def _sizes(cfg: BenchConfig) -> list[int]:
    if cfg.quick:
        return [100, 300]
    raw = os.environ.get("BENCH_STARVATION_SIZES", "1000,10000,100000")
    return [int(part) for part in raw.split(",") if part.strip()]


def _machine(env: BenchEnv, database_url: str, *, fair: bool, name: str, max_jobs: int) -> dict[str, str]:
    """The environment of a machine of the `default` queue, whose row is seeded with `fair`."""
    settings = env.settings(database_url, queue_default_limit=CONCURRENCY, claim_fairness=fair)
    machine_env = env.child_env(
        settings,
        JOB_QUEUE="default",
        MACHINE_ID=f"bench-{name}",
        MACHINE_MAX_JOBS=str(max_jobs),
        MACHINE_CONCURRENCY=str(CONCURRENCY),
        MACHINE_IDLE_SECONDS="2",
    )
    return machine_env


def b_wait_p99(env: BenchEnv, backlog: int, *, fair: bool) -> float:
    """B's wait p99 in ms behind A's `backlog`, fairness on or off."""
    database_url = env.database("starve")
    machine_env = _machine(env, database_url, fair=fair, name="starve", max_jobs=backlog + B_JOBS)
    seed = {"queue": "default", "worker": "echo", "args": Jsonb({}), "count": backlog, "tenant_id": "tenant-a"}
    sql_rows(database_url, QUERIES["seed_jobs"], seed)
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    child = env.spawn([PYTHON, "-m", "functions.machine"], machine_env, log_name="starve-machine")
    try:
        # B arrives while A's backlog is being drained.
        under_way = min(200, backlog // 2)
        wait_until(
            lambda: sql_rows(database_url, QUERIES["tenant_completed"], {"tenant_id": "tenant-a"})[0][0] >= under_way,
            timeout=120,
            what="the machine to drain A's backlog",
            child=child,
        )
        sql_rows(database_url, QUERIES["seed_jobs"], {**seed, "count": B_JOBS, "tenant_id": "tenant-b"})
        wait_until(
            lambda: sql_rows(database_url, QUERIES["tenant_completed"], {"tenant_id": "tenant-b"})[0][0] >= B_JOBS,
            timeout=1800,
            what="B's jobs to complete",
            interval=0.2,
            child=child,
        )
    finally:
        stop_process(child)
    waits = [row[0] * 1000 for row in sql_rows(database_url, QUERIES["tenant_waits"], {"tenant_id": "tenant-b"})]
    return percentile(waits, 99)


def drain_rate(env: BenchEnv, count: int, *, tenants: int, fair: bool) -> float:
    """Jobs/s of one machine draining `count` no-op jobs spread over `tenants` tenants."""
    database_url = env.database("faircost")
    machine_env = _machine(env, database_url, fair=fair, name="faircost", max_jobs=count)
    seed = {"queue": "default", "worker": "echo", "prefix": "tenant", "tenants": tenants, "count": count}
    sql_rows(database_url, QUERIES["seed_tenant_jobs"], seed)
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    child = env.spawn([PYTHON, "-m", "functions.machine"], machine_env, log_name="faircost-machine", profile=True)
    code = child.wait(timeout=600)
    completed, total, seconds = sql_rows(database_url, QUERIES["queue_span"], {"queue": "default"})[0]
    if code != 0 or completed != count:
        raise RuntimeError(f"machine exited {code} with {completed}/{total} completed: {env.log_tail(child)}")
    return float(completed / seconds)


def starvation_rows(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    sizes = _sizes(cfg)
    fair: dict[int, list[float]] = {size: [] for size in sizes}
    fifo: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(cfg.runs):
        for size in sizes:
            fair[size].append(b_wait_p99(env, size, fair=True))
            time.sleep(0.5)
            fifo[size].append(b_wait_p99(env, size, fair=False))
    small, large = sizes[0], sizes[-1]
    growth_fair = Spread.of(fair[large]).median / Spread.of(fair[small]).median
    growth_fifo = Spread.of(fifo[large]).median / Spread.of(fifo[small]).median
    per_size = "; ".join(
        f"{size:,}: fair {Spread.of(fair[size]).fmt(' ms', 1)}, FIFO {Spread.of(fifo[size]).fmt(' ms', 1)}"
        for size in sizes
    )
    return [
        Row(
            f"starvation: tenant B's wait p99 behind A's backlog of {small:,} -> {large:,} jobs, fairness on",
            f"{Spread.of(fair[small]).fmt(' ms', 1)} -> {Spread.of(fair[large]).fmt(' ms', 1)}",
            f"{Spread.of(fifo[small]).fmt(' ms', 1)} -> {Spread.of(fifo[large]).fmt(' ms', 1)} (same engine, FIFO)",
            f"{growth_fair:.2f}x growth (FIFO {growth_fifo:,.0f}x)",
            f"≤ {FLAT_TARGET:g}x growth",
            verdict(growth_fair <= FLAT_TARGET),
            f"B enqueues {B_JOBS} jobs once the machine has started {min(200, small // 2)}+ of A's; one machine, "
            f"MACHINE_CONCURRENCY={CONCURRENCY}; backlog sizes (BENCH_STARVATION_SIZES) {per_size}",
        )
    ]


def cost_rows(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    count = cfg.n(5000, 200)
    fair: list[float] = []
    fifo: list[float] = []
    ratios: list[float] = []
    # Not the verdict, to split the cost: FIFO over the same jobs of the same tenants. What fair
    # loses against it is the fair claim itself; the rest is the jobs of many tenants (their
    # index entries and rows spread out, not next to each other as one tenant's).
    spread: list[float] = []
    spread_ratios: list[float] = []
    for _ in range(cfg.runs):
        f = drain_rate(env, count, tenants=1, fair=False)
        time.sleep(0.5)
        o = drain_rate(env, count, tenants=COST_TENANTS, fair=True)
        time.sleep(0.5)
        s = drain_rate(env, count, tenants=COST_TENANTS, fair=False)
        fair.append(o)
        fifo.append(f)
        ratios.append(o / f)
        spread.append(s)
        spread_ratios.append(o / s)
    ratio = Spread.of(ratios)
    return [
        Row(
            f"fairness cost: {count:,} no-op jobs of {COST_TENANTS} tenants, fairness on, one machine, jobs/s",
            Spread.of(fair).fmt(" jobs/s"),
            Spread.of(fifo).fmt(" jobs/s") + " (one tenant, FIFO)",
            ratio.fmt("x", 2),
            f"≥ {COST_TARGET:g}",
            verdict(ratio.median >= COST_TARGET),
            f"the engine metric's drain (MACHINE_CONCURRENCY={CONCURRENCY}, queue limit {CONCURRENCY}); "
            "jobs seeded round the tenants; spans from the first claim to the last completion; "
            f"FIFO over the same {COST_TENANTS} tenants' jobs {Spread.of(spread).fmt(' jobs/s')}, "
            f"fair / that {Spread.of(spread_ratios).fmt('x', 2)}",
        )
    ]


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    return cost_rows(env, cfg) + starvation_rows(env, cfg)
