"""Metric 4, pickup latency on a warm machine: insert -> handler start, p50 / p99.

Ours: one `python -m functions.machine` (JOB_QUEUE=default, MACHINE_CONCURRENCY=1, long idle
time) waits on LISTEN; jobs of the bench function `stamp` (bench/functions.py, which appends its
start time to a file) are inserted one at a time, spaced 20-60 ms apart so each finds the machine
idle. Latency = handler start - the moment just before the INSERT was sent (so the insert's own
commit, an fsync, counts).

Reference: a pgqueuer 1.6 QueueManager idle on LISTEN in its own process; jobs enqueued with
`Queries.enqueue`, measured the same way.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from functools import partial
from pathlib import Path

import psycopg
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
    percentile,
    stop_process,
    verdict,
    wait_until,
)

NAME = "pickup"
P50_TARGET_MS, P99_TARGET_MS = 3.0, 10.0


def has_stamp(path: Path, key: str) -> bool:
    return key in read_stamps(path)


def read_stamps(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    stamps: dict[str, float] = {}
    for line in path.read_text().splitlines():
        key, _, at = line.partition(" ")
        if at:
            stamps[key] = float(at)
    return stamps


def latencies(sent: dict[str, tuple[float, float]], stamps: dict[str, float]) -> tuple[list[float], list[float]]:
    """(ms from just before the insert, ms from its commit being acknowledged) per job."""
    keys = list(sent)
    return [(stamps[k] - sent[k][0]) * 1000 for k in keys], [(stamps[k] - sent[k][1]) * 1000 for k in keys]


def stamp_job_params(path: Path) -> dict[str, object]:
    return {
        "queue": "default",
        "worker": "stamp",
        "tenant_id": TENANT,
        "args": Jsonb({"path": str(path)}),
        "meta": Jsonb({"requestId": str(uuid.uuid4())}),
        "tags": [],
        "priority": 0,
        "max_attempts": 5,
    }


def ours_latencies(env: BenchEnv, samples: int) -> tuple[list[float], list[float]]:
    database_url = env.database("pickup")
    settings = env.settings(database_url, default_function_modules=["bench.functions"])
    stamp_file = env.scratch("pickup") / "stamps.txt"
    machine_env = env.child_env(
        settings,
        JOB_QUEUE="default",
        MACHINE_ID="bench-pickup",
        MACHINE_MAX_JOBS=str(samples + 1000),
        MACHINE_CONCURRENCY="1",
        MACHINE_IDLE_SECONDS="3600",
    )
    child = env.spawn([PYTHON, "-m", "functions.machine"], machine_env, log_name="pickup-machine", profile=True)
    insert = QUERIES["raw_insert_job"].rstrip(";") + " RETURNING id"
    sent: dict[str, tuple[float, float]] = {}
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            # Warm-up: the machine is up, listening, and has run a job.
            for _ in range(3):
                row = conn.execute(insert, stamp_job_params(stamp_file), prepare=True).fetchone()
                assert row is not None
                wait_until(partial(has_stamp, stamp_file, str(row[0])), timeout=60, what="warm-up job", child=child)
            checkpoint(database_url)
            time.sleep(0.3)
            for _ in range(samples):
                time.sleep(random.uniform(0.02, 0.06))
                params = stamp_job_params(stamp_file)
                t0 = time.time()
                row = conn.execute(insert, params, prepare=True).fetchone()
                t1 = time.time()
                assert row is not None
                sent[str(row[0])] = (t0, t1)
        wait_until(lambda: set(sent) <= set(read_stamps(stamp_file)), timeout=60, what="all stamps", child=child)
    finally:
        stop_process(child)
    return latencies(sent, read_stamps(stamp_file))


def pgqueuer_latencies(env: BenchEnv, samples: int) -> tuple[list[float], list[float]]:
    from pgqueuer.queries import Queries

    from . import pgq_worker

    database_url = env.database("pgq_pickup")
    asyncio.run(pgq_worker.install(database_url))
    stamp_file = env.scratch("pgq-pickup") / "stamps.txt"
    argv = [PYTHON, "-m", "bench.pgq_worker", "listen", "--url", database_url, "--stamp-file", str(stamp_file)]
    child = env.spawn(argv, os.environ.copy(), log_name="pgq-pickup")

    async def drive() -> dict[str, tuple[float, float]]:
        sent: dict[str, tuple[float, float]] = {}
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        async with conn:
            queries = Queries.from_psycopg_connection(conn)
            for i in range(3):
                key = f"warm-{i}"
                await queries.enqueue("stamp", key.encode())
                deadline = time.monotonic() + 60
                while key not in read_stamps(stamp_file):
                    if time.monotonic() > deadline or child.poll() is not None:
                        raise RuntimeError(f"pgqueuer worker did not run the warm-up job: {env.log_tail(child)}")
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(checkpoint, database_url)
            await asyncio.sleep(0.3)
            for i in range(samples):
                await asyncio.sleep(random.uniform(0.02, 0.06))
                key = f"job-{i}"
                t0 = time.time()
                await queries.enqueue("stamp", key.encode())
                sent[key] = (t0, time.time())
        return sent

    try:
        sent = asyncio.run(drive())
        wait_until(lambda: set(sent) <= set(read_stamps(stamp_file)), timeout=60, what="pgqueuer stamps", child=child)
    finally:
        stop_process(child)
    return latencies(sent, read_stamps(stamp_file))


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    samples = cfg.n(200, 10)
    ours50: list[float] = []
    ours99: list[float] = []
    ref50: list[float] = []
    ref99: list[float] = []
    ours_commit50: list[float] = []
    ref_commit50: list[float] = []
    for _ in range(cfg.runs):
        ref, ref_commit = pgqueuer_latencies(env, samples)
        ours, ours_commit = ours_latencies(env, samples)
        ours_commit50.append(percentile(ours_commit, 50))
        ref_commit50.append(percentile(ref_commit, 50))
        ours50.append(percentile(ours, 50))
        ours99.append(percentile(ours, 99))
        ref50.append(percentile(ref, 50))
        ref99.append(percentile(ref, 99))
    o50, o99, r50, r99 = (Spread.of(v) for v in (ours50, ours99, ref50, ref99))
    return [
        Row(
            "pickup latency, warm machine: insert -> handler start, p50",
            o50.fmt(" ms", 2),
            r50.fmt(" ms", 2) + " (pgqueuer on LISTEN)",
            f"{o50.median / r50.median:.2f}x",
            f"≤ {P50_TARGET_MS:g} ms and below pgqueuer",
            verdict(o50.median <= P50_TARGET_MS and o50.median < r50.median),
            f"{samples} jobs per run, one at a time, 20-60 ms apart; clock starts before the INSERT is sent "
            "(its commit included); MACHINE_CONCURRENCY=1. Counted from the commit's acknowledgement instead: "
            f"ours p50 {Spread.of(ours_commit50).fmt(' ms', 2)}, pgqueuer p50 {Spread.of(ref_commit50).fmt(' ms', 2)}",
        ),
        Row(
            "pickup latency, warm machine: insert -> handler start, p99",
            o99.fmt(" ms", 2),
            r99.fmt(" ms", 2) + " (pgqueuer on LISTEN)",
            f"{o99.median / r99.median:.2f}x",
            f"≤ {P99_TARGET_MS:g} ms and below pgqueuer",
            verdict(o99.median <= P99_TARGET_MS and o99.median < r99.median),
        ),
    ]
