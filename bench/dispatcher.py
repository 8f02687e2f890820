"""Metric 9, dispatcher overhead: 10,000 queued jobs drained end to end with the local launcher.

10,000 jobs of the bench function `mark` (bench/functions.py: one `bench_runs` row per execution)
are seeded on the `default` queue; then the dispatcher runs in this process (leader, local
launcher) and launches machines until the queue is drained. While it runs, the launcher's live
processes are sampled every 20 ms.

Checks: never more live machines than the queue limit allows (ceil(limit / MACHINE_CONCURRENCY)),
every job completed, every job executed exactly once (zero lost, zero run twice). Also reported:
machines launched and end-to-end jobs/s.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from functions.registry import machine_program
from shared.settings import Settings

from .harness import QUERIES, TENANT, BenchConfig, BenchEnv, Row, checkpoint, sql_rows, verdict

NAME = "dispatcher"
QUEUE_LIMIT = 10
CONCURRENCY = 2
MAX_JOBS = 500


async def drain(settings: Settings, count: int, timeout: float) -> dict[str, Any]:
    from functions.dispatcher.leader import Dispatcher
    from shared.db.pool import open_pool
    from shared.launchers.local import LocalLauncher

    pool = await open_pool(settings.database_url, max_size=5)
    launcher = LocalLauncher(program=machine_program(), settings=settings)
    dispatcher = Dispatcher(settings, pool, launcher)
    stop = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(dispatcher.run(stop))
    max_alive = 0
    drained_at: float | None = None
    try:
        conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
        async with conn:
            next_check = 0.0
            while time.monotonic() - started < timeout:
                statuses = await launcher.list_machines(queue="default")
                max_alive = max(max_alive, sum(1 for s in statuses if s.state == "running"))
                if time.monotonic() >= next_check:
                    cur = await conn.execute(
                        "SELECT count(*) FROM jobs WHERE queue = 'default' AND state = 'completed'"
                    )
                    row = await cur.fetchone()
                    if row is not None and row[0] >= count:
                        drained_at = time.monotonic()
                        break
                    next_check = time.monotonic() + 0.25
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await launcher.aclose()
        await pool.close()
    return {"max_alive": max_alive, "seconds": (drained_at or time.monotonic()) - started, "drained": bool(drained_at)}


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    count = cfg.n(10_000, 200)
    database_url = env.database("dispatcher")
    settings = env.settings(
        database_url,
        default_function_modules=["bench.functions"],
        queue_default_limit=QUEUE_LIMIT,
        machine_concurrency=CONCURRENCY,
        machine_max_jobs=MAX_JOBS,
        machine_idle_seconds=1.0,
    )
    sql_rows(database_url, QUERIES["create_run_markers"])
    sql_rows(
        database_url,
        QUERIES["seed_jobs"],
        {"queue": "default", "worker": "mark", "tenant_id": TENANT, "args": Jsonb({}), "count": count},
    )
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    outcome = asyncio.run(drain(settings, count, timeout=300 if not cfg.quick else 120))
    summary = sql_rows(database_url, QUERIES["run_marker_summary"])[0]
    jobs, completed, never_ran, ran_once, ran_twice, executions = summary
    machines = sql_rows(database_url, "SELECT count(*), coalesce(max(jobs_run), 0) FROM machines")[0]
    allowed = math.ceil(QUEUE_LIMIT / CONCURRENCY)
    ok_machines = outcome["max_alive"] <= allowed
    ok_runs = jobs == completed == ran_once == executions == count and never_ran == ran_twice == 0
    rate = completed / outcome["seconds"] if outcome["seconds"] else 0.0
    return [
        Row(
            f"dispatcher: {count:,} queued jobs drained, local launcher",
            f"{completed:,}/{count:,} completed, {never_ran} lost, {ran_twice} run twice; "
            f"max {outcome['max_alive']} machines alive, {machines[0]} launched",
            "—",
            "—",
            f"≤ {allowed} machines at once (limit {QUEUE_LIMIT} / concurrency {CONCURRENCY}); 0 lost; 0 twice",
            verdict(ok_machines and ok_runs and outcome["drained"]),
            f"{rate:,.0f} jobs/s end to end ({outcome['seconds']:.1f} s from the dispatcher's start, machine boots "
            f"included); MACHINE_MAX_JOBS={MAX_JOBS}, each job writes a marker row per execution; "
            f"{executions:,} executions recorded",
        )
    ]
