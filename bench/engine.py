"""Metric 3, job engine: claim + complete of no-op jobs in ONE function machine, jobs/s.

Ours: N `echo` jobs seeded on the `default` queue, then one `python -m functions.machine`
(JOB_QUEUE=default, MACHINE_MAX_JOBS=N, MACHINE_CONCURRENCY=C, queue limit C) drains them.
Jobs/s = N / (last completed_at - first attempted_at), read back from the job rows.

Reference: pgqueuer 1.6 draining N no-op jobs with one QueueManager in its own process (drain
mode, batch size 10, psycopg driver). Jobs/s = N / (last success - first pick) from pgqueuer_log.
Both spans start at the first claim, so neither side's process start counts.
"""

from __future__ import annotations

import asyncio
import os
import time

from psycopg.types.json import Jsonb

from .harness import (
    PYTHON,
    QUERIES,
    TENANT,
    BenchConfig,
    BenchEnv,
    Row,
    Spread,
    checkpoint,
    cpu_from_first_work,
    sql_rows,
    verdict,
)

NAME = "engine"
TARGET = 3.0
CONCURRENCY = int(os.environ.get("BENCH_MACHINE_CONCURRENCY", "10"))


def ours_once(env: BenchEnv, cfg: BenchConfig, count: int) -> tuple[float, float, float]:
    """(jobs/s, the machine's CPU µs per job, the database's CPU µs per job)."""
    database_url = env.database("engine")
    settings = env.settings(database_url, queue_default_limit=CONCURRENCY)
    sql_rows(
        database_url,
        QUERIES["seed_jobs"],
        {"queue": "default", "worker": "echo", "tenant_id": TENANT, "args": Jsonb({}), "count": count},
    )
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    machine_env = env.child_env(
        settings,
        JOB_QUEUE="default",
        MACHINE_ID="bench-engine",
        MACHINE_MAX_JOBS=str(count),
        MACHINE_CONCURRENCY=str(CONCURRENCY),
        MACHINE_IDLE_SECONDS="2",
    )
    child = env.spawn([PYTHON, "-m", "functions.machine"], machine_env, log_name="engine-machine", profile=True)
    # CPU counted from the machine's first claim (its imports and start-up left out) to its exit
    # (its last idle seconds included: a poll a second).
    code, machine_cpu, database_cpu = cpu_from_first_work(
        env, child, database_url, QUERIES["first_claimed"], {"queue": "default"}, what="the machine"
    )
    completed, total, seconds = sql_rows(database_url, QUERIES["queue_span"], {"queue": "default"})[0]
    if code != 0 or completed != count:
        raise RuntimeError(f"machine exited {code} with {completed}/{total} completed: {env.log_tail(child)}")
    return float(completed / seconds), machine_cpu / count * 1e6, database_cpu / count * 1e6


def pgqueuer_once(env: BenchEnv, count: int) -> tuple[float, float, float]:
    """pgqueuer's drain of `count` no-op jobs: (jobs/s, its process's CPU µs per job, the cluster's
    CPU µs per job), CPU counted as the machine's is, from its first pick to its exit."""
    from . import pgq_worker

    database_url = env.database("pgq_engine")
    asyncio.run(pgq_worker.install(database_url))
    asyncio.run(pgq_worker.enqueue(database_url, "noop", count))
    sql_rows(database_url, "VACUUM ANALYZE")
    checkpoint(database_url)
    argv = [PYTHON, "-m", "bench.pgq_worker", "drain", "--url", database_url]
    child = env.spawn(argv, os.environ.copy(), log_name="pgq-engine")
    code, client_cpu, database_cpu = cpu_from_first_work(
        env, child, database_url, QUERIES["pgqueuer_first_pick"], what="pgqueuer"
    )
    completed, seconds = sql_rows(database_url, QUERIES["pgqueuer_span"])[0]
    if code != 0 or completed != count:
        raise RuntimeError(f"pgqueuer drain exited {code} with {completed}/{count}: {env.log_tail(child)}")
    return float(completed / seconds), client_cpu / count * 1e6, database_cpu / count * 1e6


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    count = cfg.n(5000, 100)
    ours: list[float] = []
    ref: list[float] = []
    ratios: list[float] = []
    machine_cpu: list[float] = []
    database_cpu: list[float] = []
    pgq_cpu: list[float] = []
    pgq_database_cpu: list[float] = []
    for _ in range(cfg.runs):
        r, pgq_us, pgq_database_us = pgqueuer_once(env, count)
        pgq_cpu.append(pgq_us)
        pgq_database_cpu.append(pgq_database_us)
        time.sleep(0.5)
        o, machine_us, database_us = ours_once(env, cfg, count)
        machine_cpu.append(machine_us)
        database_cpu.append(database_us)
        ours.append(o)
        ref.append(r)
        ratios.append(o / r)
    ratio = Spread.of(ratios)
    return [
        Row(
            f"job engine: claim + complete, {count:,} no-op jobs, one machine, jobs/s",
            Spread.of(ours).fmt(" jobs/s"),
            Spread.of(ref).fmt(" jobs/s") + " (pgqueuer drain)",
            ratio.fmt("x", 2),
            f"≥ {TARGET:g}",
            verdict(ratio.median >= TARGET),
            f"machine: MACHINE_CONCURRENCY={CONCURRENCY} (queue limit {CONCURRENCY}), built-in `echo`; "
            "pgqueuer: one QueueManager, batch size 10, no concurrency cap; "
            "spans from the first claim to the last completion, read from the database; CPU per job "
            f"(steadier than jobs/s on a shared box), from the first claim to the machine's exit: machine "
            f"{Spread.of(machine_cpu).fmt(' µs')}, Postgres (the whole cluster) {Spread.of(database_cpu).fmt(' µs')}; "
            f"pgqueuer from its first pick: its process {Spread.of(pgq_cpu).fmt(' µs')}, "
            f"Postgres {Spread.of(pgq_database_cpu).fmt(' µs')}",
        )
    ]
