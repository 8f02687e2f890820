"""Engine scaling with claimers: 1, 8, 32 and 128 concurrent claimers on one queue, jobs/s and
claim latency p99 per count, against pgqueuer with as many consumers.

Ours: N jobs seeded on the `default` queue (production settings: fair claims on, one tenant),
queue limit 1,000 (the most a queue allows). K simulated machines, each an asyncio task on its own
autocommit dict-row connection (as the machine's pool hands out), spread over BENCH_CLAIMER_PROCS
processes. Each runs the machine's claim and completion code paths with a no-op handler:
`transitions.claim` (claim_jobs, up to BATCH jobs) then `transitions.complete_many` with the machine's
id (what the recorder's batcher writes: one statement that also counts the machine's jobs run),
and again, until a claim comes back empty and no job is available. Claim latency is each claim call as
the claimer sees it. Jobs/s = N / (last completed_at - first attempted_at), from the job rows.

Reference: pgqueuer 1.6, K QueueManagers (one connection each, batch size BATCH, drain mode, no-op
entrypoint) spread over the same number of processes; jobs/s from pgqueuer_log (first pick to last
success); claim latency = each `dequeue` call.

Every process connects first and reports ready; the claims start together when all are.

Environment: BENCH_CLAIMERS (default "1,8,32,128"; "1,8" in quick mode), BENCH_CLAIMER_JOBS (jobs per count and run,
default 5000), BENCH_CLAIM_BATCH (jobs per claim, default 5), BENCH_CLAIMER_PROCS (processes,
default 2). Targets: throughput never falls as claimers grow (each count within NOISE of the best
smaller count), and >= 1x pgqueuer at each count.

    python -m bench.claimers engine --url URL --claimers K --batch B --name P
    python -m bench.claimers pgq --url URL --consumers K --batch B
        (child processes: print "ready", wait for a line on stdin, run, print one JSON line)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from .harness import (
    PYTHON,
    QUERIES,
    REPO_ROOT,
    TENANT,
    BenchConfig,
    BenchEnv,
    Row,
    Spread,
    checkpoint,
    json_line,
    percentile,
    sql_rows,
    stop_process,
    verdict,
)

NAME = "claimers"
QUEUE = "default"
QUEUE_LIMIT = 1000
NOISE = 0.10  # "never falls": a count may sit up to 10 % under the best smaller count (run-to-run noise)


def claimer_counts(*, quick: bool = False) -> list[int]:
    # Quick mode (the test suite's smoke run) takes two counts: the same code, a quarter of the time.
    default = "1,8" if quick else "1,8,32,128"
    return [int(x) for x in os.environ.get("BENCH_CLAIMERS", default).split(",") if x.strip()]


def batch_size() -> int:
    return int(os.environ.get("BENCH_CLAIM_BATCH", "5"))


def process_count() -> int:
    return max(1, int(os.environ.get("BENCH_CLAIMER_PROCS", "2")))


# ---------------------------------------------------------------------------------------------
# child processes


async def _wait_for_go() -> None:
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def engine_child(url: str, claimers: int, batch: int, name: str) -> dict[str, Any]:
    from shared.db import transitions
    from shared.db.models import Fence
    from shared.db.pool import connect

    conns = [await connect(url) for _ in range(claimers)]
    latencies: list[float] = []
    done = 0

    async def claimer(i: int) -> None:
        nonlocal done
        conn = conns[i]
        machine_id = f"{name}-{i}"
        while True:
            t0 = time.perf_counter()
            jobs = await transitions.claim(conn, queue=QUEUE, machine_id=machine_id, max_jobs=batch)
            latencies.append(time.perf_counter() - t0)
            if not jobs:
                # Empty: the queue is drained, unless the queue limit held this claim back.
                cur = await conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = %s AND state = 'available')", (QUEUE,)
                )
                row = await cur.fetchone()
                if row is None or not next(iter(row.values())):
                    return
                await asyncio.sleep(0.005)
                continue
            _, fresh = await transitions.complete_many(
                conn, done=[(Fence.of(job), {}) for job in jobs], machine_id=machine_id
            )
            done += len(fresh)

    await _wait_for_go()
    started = time.perf_counter()
    await asyncio.gather(*(claimer(i) for i in range(claimers)))
    wall = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return {"done": done, "wall": wall, "claims": len(latencies), "latencies_ms": [v * 1000 for v in latencies]}


async def pgq_child(url: str, consumers: int, batch: int) -> dict[str, Any]:
    from datetime import timedelta

    from pgqueuer import QueueManager
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    from .pgq_worker import connect

    latencies: list[float] = []
    managers = []
    for _ in range(consumers):
        queries = await connect(url)
        qm = QueueManager(queries)

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        original = qm.queries.dequeue

        async def timed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await _original(*args, **kwargs)
            finally:
                latencies.append(time.perf_counter() - t0)

        qm.queries.dequeue = timed  # type: ignore[method-assign]
        managers.append(qm)

    await _wait_for_go()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            qm.run(mode=QueueExecutionMode.drain, batch_size=batch, log_aggregation_interval=timedelta(0))
            for qm in managers
        )
    )
    wall = time.perf_counter() - started
    return {"wall": wall, "claims": len(latencies), "latencies_ms": [v * 1000 for v in latencies]}


# ---------------------------------------------------------------------------------------------
# the parent


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_children(env: BenchEnv, argvs: list[list[str]], timeout: float) -> list[dict[str, Any]]:
    """Start the children, wait until each says ready, tell them all to go, collect their JSON."""
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    children: list[subprocess.Popen[str]] = []
    log_dir = env.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [open(log_dir / f"claimers-{os.getpid()}-{time.monotonic_ns()}-{i}.log", "w") for i in range(len(argvs))]
    try:
        for argv, log in zip(argvs, logs, strict=True):
            children.append(
                subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    env=child_env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            )
        for child, log in zip(children, logs, strict=True):
            assert child.stdout is not None
            line = child.stdout.readline()
            if line.strip() != "ready":
                child.wait(10)
                raise RuntimeError(f"child did not get ready: {line!r} {Path(log.name).read_text()[-800:]}")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        deadline = time.monotonic() + timeout
        for child in children:
            out, _ = child.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if child.returncode != 0:
                raise RuntimeError(f"child exited {child.returncode}: {out[-300:]}")
            results.append(json_line(out))
        return results
    finally:
        for child in children:
            stop_process(child)
        for log in logs:
            log.close()


def ours_once(env: BenchEnv, claimers: int, count: int, batch: int) -> dict[str, float]:
    database_url = env.database("claimers")
    env.settings(database_url)  # queue rows at production defaults (fair claims on)
    sql_rows(database_url, 'UPDATE queues SET "limit" = %s WHERE name = %s', (QUEUE_LIMIT, QUEUE))
    sql_rows(
        database_url,
        QUERIES["seed_jobs"],
        {"queue": QUEUE, "worker": "echo", "tenant_id": TENANT, "args": Jsonb({}), "count": count},
    )
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    argvs = [
        [
            PYTHON,
            "-m",
            "bench.claimers",
            "engine",
            "--url",
            database_url,
            "--claimers",
            str(k),
            "--batch",
            str(batch),
            "--name",
            f"sim{p}",
        ]
        for p, k in enumerate(split(claimers, process_count()))
    ]
    results = run_children(env, argvs, timeout=600)
    completed, total, seconds = sql_rows(database_url, QUERIES["queue_span"], {"queue": QUEUE})[0]
    if completed != count:
        raise RuntimeError(f"{claimers} claimers completed {completed}/{total} jobs")
    latencies = [v for r in results for v in r["latencies_ms"]]
    return {"rate": completed / seconds, "p99": percentile(latencies, 99), "p50": percentile(latencies, 50)}


def pgqueuer_once(env: BenchEnv, consumers: int, count: int, batch: int) -> dict[str, float]:
    from . import pgq_worker

    database_url = env.database("pgq_claimers")
    asyncio.run(pgq_worker.install(database_url))
    asyncio.run(pgq_worker.enqueue(database_url, "noop", count))
    sql_rows(database_url, "VACUUM ANALYZE")
    checkpoint(database_url)
    argvs = [
        [PYTHON, "-m", "bench.claimers", "pgq", "--url", database_url, "--consumers", str(k), "--batch", str(batch)]
        for k in split(consumers, process_count())
    ]
    results = run_children(env, argvs, timeout=600)
    completed, seconds = sql_rows(database_url, QUERIES["pgqueuer_span"])[0]
    if completed != count:
        raise RuntimeError(f"pgqueuer with {consumers} consumers completed {completed}/{count}")
    latencies = [v for r in results for v in r["latencies_ms"]]
    return {"rate": completed / seconds, "p99": percentile(latencies, 99), "p50": percentile(latencies, 50)}


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    counts = claimer_counts(quick=cfg.quick)
    jobs = cfg.n(int(os.environ.get("BENCH_CLAIMER_JOBS", "5000")), 200)
    batch = batch_size()
    ours: dict[int, list[float]] = {k: [] for k in counts}
    ours_p99: dict[int, list[float]] = {k: [] for k in counts}
    ref: dict[int, list[float]] = {k: [] for k in counts}
    ref_p99: dict[int, list[float]] = {k: [] for k in counts}
    ratios: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(cfg.runs):
        for k in counts:
            r = pgqueuer_once(env, k, jobs, batch)
            time.sleep(0.5)
            o = ours_once(env, k, jobs, batch)
            ours[k].append(o["rate"])
            ours_p99[k].append(o["p99"])
            ref[k].append(r["rate"])
            ref_p99[k].append(r["p99"])
            ratios[k].append(o["rate"] / r["rate"])
            print(
                f"    claimers {k:>4}: ours {o['rate']:8,.0f} jobs/s p99 {o['p99']:7.1f} ms | "
                f"pgqueuer {r['rate']:8,.0f} jobs/s p99 {r['p99']:7.1f} ms | {o['rate'] / r['rate']:.2f}x",
                flush=True,
            )
    medians = {k: Spread.of(ours[k]).median for k in counts}
    # The curve, as a small table in the output.
    print("    claimers | ours jobs/s | claim p99 ms | pgqueuer jobs/s | dequeue p99 ms | ratio")
    for k in counts:
        print(
            f"    {k:>8} | {Spread.of(ours[k]).fmt():>11} | {Spread.of(ours_p99[k]).fmt(digits=1):>12} | "
            f"{Spread.of(ref[k]).fmt():>15} | {Spread.of(ref_p99[k]).fmt(digits=1):>14} | "
            f"{Spread.of(ratios[k]).fmt('x', 2)}",
            flush=True,
        )
    rows: list[Row] = []
    best_before = 0.0
    falls: list[str] = []
    for k in counts:
        if best_before and medians[k] < best_before * (1 - NOISE):
            falls.append(f"{k} ({medians[k]:,.0f} < best smaller {best_before:,.0f})")
        best_before = max(best_before, medians[k])
        ratio = Spread.of(ratios[k])
        rows.append(
            Row(
                f"engine scaling: {k} claimers, {jobs:,} no-op jobs, jobs/s (claim p99)",
                f"{Spread.of(ours[k]).fmt(' jobs/s')} (p99 {Spread.of(ours_p99[k]).fmt(' ms', 1)})",
                f"{Spread.of(ref[k]).fmt(' jobs/s')} (p99 {Spread.of(ref_p99[k]).fmt(' ms', 1)}) "
                f"(pgqueuer, {k} consumers)",
                ratio.fmt("x", 2),
                "≥ 1",
                verdict(ratio.median >= 1.0),
                "",
            )
        )
    curve = ", ".join(f"{k}: {medians[k]:,.0f}" for k in counts)
    rows.append(
        Row(
            "engine scaling: throughput as claimers grow (" + "/".join(str(k) for k in counts) + ")",
            curve + " jobs/s",
            ", ".join(f"{k}: {Spread.of(ref[k]).median:,.0f}" for k in counts) + " jobs/s (pgqueuer)",
            "—",
            f"never falls (within {NOISE:.0%} of the best smaller count)",
            verdict(not falls),
            f"simulated machines: asyncio tasks, one connection each, over {process_count()} processes; each claims "
            f"up to {batch} jobs (claim_jobs via transitions.claim) and completes them in one statement "
            f"(complete_many with the machine's count, as the recorder); queue limit {QUEUE_LIMIT}, fair claims on, "
            "one tenant; "
            f"pgqueuer: as many QueueManagers, batch size {batch}, drain mode; claim p99 = claim_jobs call / pgqueuer "
            "dequeue call as the client sees it" + (f"; FALLS at {', '.join(falls)}" if falls else ""),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claimers")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine")
    e.add_argument("--url", required=True)
    e.add_argument("--claimers", type=int, required=True)
    e.add_argument("--batch", type=int, required=True)
    e.add_argument("--name", required=True)
    q = sub.add_parser("pgq")
    q.add_argument("--url", required=True)
    q.add_argument("--consumers", type=int, required=True)
    q.add_argument("--batch", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "engine":
        result = asyncio.run(engine_child(args.url, args.claimers, args.batch, args.name))
    else:
        result = asyncio.run(pgq_child(args.url, args.consumers, args.batch))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
