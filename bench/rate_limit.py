"""Rate limit per key (issue 13): accuracy of a fleet-wide limit, enforced by the claim in Postgres.

One tenant's key is limited to 50 starts per second (PUT /admin/queues/{name}/limits writes the
same row). Three `python -m functions.machine` processes (MACHINE_CONCURRENCY=10, queue limit 30)
drain a backlog of `echo` jobs for BENCH_RATE_SECONDS (default 60). From the jobs' start times:
the achieved rate over the measured span (target 50/s +- 5 %) and the most starts in any one
second (sliding: every window that begins at a start), which must never exceed the limit.
"""

from __future__ import annotations

import bisect
import os
import time

from psycopg.types.json import Jsonb

from .harness import PYTHON, QUERIES, BenchConfig, BenchEnv, Row, checkpoint, sql_rows, stop_process, verdict

NAME = "ratelimit"
LIMIT = 50  # starts per second for the key
MACHINES = 3
CONCURRENCY = 10
TOLERANCE = 0.05
BOOT_TIMEOUT = 120.0  # seconds for the first machine to start a job


def max_in_window(starts: list[float], window: float = 1.0) -> int:
    """The most starts within any half-open window [t, t + window) that begins at a start (a window
    that begins elsewhere can be slid right to the next start without losing any)."""
    return max((bisect.bisect_left(starts, t + window) - i for i, t in enumerate(starts)), default=0)


def db_now(database_url: str) -> float:
    [(now,)] = sql_rows(database_url, "SELECT extract(epoch FROM clock_timestamp())::float8")
    return float(now)


def wait_for_first_start(database_url: str, timeout: float) -> float | None:
    """The epoch second (database clock) of the queue's first start, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [(first,)] = sql_rows(database_url, QUERIES["first_start"], {"queue": "default"})
        if first is not None:
            return float(first)
        time.sleep(0.1)
    return None


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    seconds = 5.0 if cfg.quick else float(os.environ.get("BENCH_RATE_SECONDS", "60"))
    database_url = env.database("ratelimit")
    settings = env.settings(database_url, queue_default_limit=MACHINES * CONCURRENCY)
    count = int(LIMIT * seconds * 1.5) + 500  # more than the limit lets through: the key is never idle
    seed = {"queue": "default", "worker": "echo", "args": Jsonb({}), "count": count, "tenant_id": "limited"}
    sql_rows(database_url, QUERIES["seed_jobs"], seed)
    sql_rows(database_url, QUERIES["set_rate_limit"], {"queue": "default", "limit": LIMIT, "period": 1.0})
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    children = []
    for n in range(MACHINES):
        machine_env = env.child_env(
            settings,
            JOB_QUEUE="default",
            MACHINE_ID=f"bench-rate-{n}",
            MACHINE_MAX_JOBS=str(count),
            MACHINE_CONCURRENCY=str(CONCURRENCY),
            MACHINE_IDLE_SECONDS="30",
        )
        children.append(env.spawn([PYTHON, "-m", "functions.machine"], machine_env, log_name=f"rate-machine-{n}"))
    try:
        # The measured span starts at the first start and lasts `seconds`. Machines boot in a few
        # hundred ms on a quiet box but in seconds on a loaded one, so wait for that first start
        # (bounded) rather than guess, then run a little past the span so it is full.
        first = wait_for_first_start(database_url, timeout=BOOT_TIMEOUT)
        if first is not None:
            time.sleep(max(0.0, first + seconds + 1.0 - db_now(database_url)))
    finally:
        for child in children:
            stop_process(child)
    starts = [row[0] for row in sql_rows(database_url, QUERIES["start_times"], {"queue": "default"})]
    if not starts:
        raise RuntimeError(f"no job started: {env.log_tail(children[0])}")
    span_end = starts[0] + seconds
    in_span = bisect.bisect_left(starts, span_end)
    rate = in_span / seconds
    busiest = max_in_window(starts)
    [(machines_used,)] = sql_rows(database_url, "SELECT count(DISTINCT attempted_by) FROM jobs")
    ok = abs(rate - LIMIT) <= LIMIT * TOLERANCE and busiest <= LIMIT
    return [
        Row(
            f"rate limit: one key limited to {LIMIT}/s, {MACHINES} machines, {seconds:g} s",
            f"{rate:.2f}/s achieved; busiest second {busiest} starts",
            f"limit {LIMIT}/s, at most {LIMIT} in any 1 s window",
            f"{rate / LIMIT:.3f}x",
            f"{LIMIT}/s ± {TOLERANCE:.0%}, never > {LIMIT} in 1 s",
            verdict(ok),
            f"{MACHINES} machines (MACHINE_CONCURRENCY={CONCURRENCY}, queue limit {MACHINES * CONCURRENCY}), "
            f"{machines_used} of them started jobs; {len(starts):,} starts in all; the limit is a sliding "
            "one-second window per key, kept by the claim under the queue's row lock; windows checked at "
            "every start (BENCH_RATE_SECONDS sets the span)",
        )
    ]
