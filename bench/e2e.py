"""End to end: N webhook jobs delivered to a loopback HTTP receiver, jobs/s, against pgqueuer
delivering the same webhooks with the same concurrency.

Receiver: `bench.receiver` in its own process, counting deliveries by the sequence number each
webhook's payload carries (lost = N - distinct, duplicated = requests - distinct).

Ours: N `webhooks` jobs seeded in the table (the row the ingress writes, `"seq": i` in the
payload, URL http://127.0.0.1:<receiver>/hook; OUTBOUND_ALLOWLIST=127.0.0.1 lets it through),
then the real dispatcher runs in this process (leader, local launcher) and launches machines of
the real `webhooks` function (signed Standard Webhooks POSTs through the machine's outbound
client). Queue limit L, MACHINE_CONCURRENCY C, so ceil(L / C) machines at once.

Reference: pgqueuer 1.6, the same N jobs (payload = the same JSON body), ceil(L / C) worker
processes, each a QueueManager whose entrypoint POSTs the payload with one shared
httpx.AsyncClient, at most C POSTs at once per worker (a semaphore around the POST; pgqueuer picks
ahead in batches of 10, its default): L deliveries at once in all, like the machines. Observed:
pgqueuer's psycopg driver reads NOTIFYs with `notifies(timeout=1.0)` on its only connection, which
holds the connection while the channel is quiet, so a dequeue often waits up to 1 s; its own
`max_concurrent_tasks` cap or entrypoint `concurrency_limit` made that worse (11-16 jobs/s).
asyncpg (pgqueuer's other driver) is not in the lock file.

Both spans run from the start (dispatcher start / worker processes spawned, so machine boots and
process starts count on both sides) to the last delivery the receiver saw.

Environment: BENCH_E2E_JOBS (default 10000), BENCH_E2E_CONCURRENCY (L, default 20: the webhooks
function's own limit), BENCH_E2E_MACHINE_CONCURRENCY (C, default 10), BENCH_E2E_MACHINE_MAX_JOBS
(default 1000). Target: >= 1x pgqueuer; zero lost and zero duplicated deliveries on both sides.

    python -m bench.e2e pgq --url URL --receiver URL --concurrency L [--batch B]   (a pgqueuer worker)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from typing import Any

import httpx
from psycopg.types.json import Jsonb

from functions.registry import load_registry, machine_program
from infra.local.postgres import free_port
from shared.schemas.webhooks import WebhookRequest
from shared.settings import Settings

from .harness import (
    PYTHON,
    QUERIES,
    TENANT,
    BenchConfig,
    BenchEnv,
    Row,
    Spread,
    checkpoint,
    sql_rows,
    stop_process,
    verdict,
    wait_until,
)

NAME = "e2e"
TARGET = 1.0
PGQ_BATCH = 10  # pgqueuer's default batch size


def sizes(cfg: BenchConfig) -> tuple[int, int, int, int]:
    jobs = cfg.n(int(os.environ.get("BENCH_E2E_JOBS", "10000")), 200)
    limit = int(os.environ.get("BENCH_E2E_CONCURRENCY", "20"))
    concurrency = int(os.environ.get("BENCH_E2E_MACHINE_CONCURRENCY", "10"))
    max_jobs = int(os.environ.get("BENCH_E2E_MACHINE_MAX_JOBS", "1000"))
    return jobs, limit, concurrency, max_jobs


def payload(seq: int) -> dict[str, Any]:
    return {"seq": seq, "invoiceId": "inv_0001", "amount": 4200, "currency": "EUR", "lines": [1, 2, 3]}


def receiver_stats(receiver: str) -> dict[str, Any]:
    return dict(httpx.get(f"{receiver}/stats", timeout=5, trust_env=False).json())


def reset_receiver(receiver: str) -> None:
    httpx.post(f"{receiver}/reset", timeout=5, trust_env=False).raise_for_status()


async def wait_for_deliveries(receiver: str, count: int, *, timeout: float, alive: Any = None) -> bool:
    """Poll the receiver until `count` distinct deliveries (or timeout, or `alive()` false)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            stats = (await client.get(f"{receiver}/stats")).json()
            if stats["distinct"] >= count:
                return True
            if alive is not None and not alive():
                return False
            await asyncio.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------
# ours


async def dispatch_until_delivered(settings: Settings, receiver: str, count: int, timeout: float) -> dict[str, Any]:
    from functions.dispatcher.leader import Dispatcher
    from shared.db.pool import open_pool
    from shared.launchers.local import LocalLauncher

    pool = await open_pool(settings.database_url, max_size=5)
    launcher = LocalLauncher(program=machine_program(), settings=settings)
    dispatcher = Dispatcher(settings, pool, launcher)
    stop = asyncio.Event()
    started = time.time()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        delivered = await wait_for_deliveries(receiver, count, timeout=timeout, alive=lambda: not task.done())
        # Let the last completions land before the books are read.
        async with asyncio.timeout(30):
            while delivered:
                rows = sql_rows(settings.database_url, QUERIES["completed_count"], {"queue": "webhooks"})
                if rows[0][0] >= count:
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await launcher.aclose()
        await pool.close()
    return {"started": started, "delivered": delivered}


def ours_once(env: BenchEnv, cfg: BenchConfig, receiver: str) -> dict[str, Any]:
    count, limit, concurrency, max_jobs = sizes(cfg)
    database_url = env.database("e2e")
    settings = env.settings(
        database_url,
        queue_limits={"webhooks": limit},
        machine_concurrency=concurrency,
        machine_max_jobs=max_jobs,
        machine_idle_seconds=1.0,
        outbound_allowlist=["127.0.0.1"],
    )
    spec = load_registry()["webhooks"]
    args = WebhookRequest.model_validate(
        {"url": f"{receiver}/hook", "event": "invoice.paid", "payload": payload(0)}
    ).function_args()
    sql_rows(
        database_url,
        QUERIES["seed_webhook_jobs"],
        {
            "worker": spec.worker,
            "tenant_id": TENANT,
            "args": Jsonb(args),
            "max_attempts": spec.max_attempts,
            "count": count,
        },
    )
    sql_rows(database_url, "VACUUM ANALYZE jobs")
    checkpoint(database_url)
    reset_receiver(receiver)
    outcome = asyncio.run(dispatch_until_delivered(settings, receiver, count, timeout=600 if not cfg.quick else 120))
    stats = receiver_stats(receiver)
    states = dict(sql_rows(database_url, "SELECT state::text, count(*) FROM jobs WHERE queue = 'webhooks' GROUP BY 1"))
    machines = sql_rows(database_url, "SELECT count(*) FROM machines")[0][0]
    seconds = stats["last"] - outcome["started"]
    return {
        "rate": stats["distinct"] / seconds if seconds > 0 else math.nan,
        "seconds": seconds,
        "lost": count - stats["distinct"],
        "duplicates": stats["duplicates"],
        "unparsed": stats["unparsed"],
        "completed": states.get("completed", 0),
        "states": states,
        "machines": machines,
        "delivered": outcome["delivered"],
    }


# ---------------------------------------------------------------------------------------------
# pgqueuer


async def pgq_worker(url: str, receiver: str, concurrency: int, batch: int, cap: bool) -> None:
    """One worker, at most `concurrency` deliveries at once (like one machine): by a semaphore
    around the POST (pgqueuer picks ahead, its default), or by pgqueuer's max_concurrent_tasks
    when `cap`."""
    from datetime import timedelta

    from pgqueuer import QueueManager
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    from .pgq_worker import connect

    queries = await connect(url)
    qm = QueueManager(queries)
    client = httpx.AsyncClient(trust_env=False, timeout=30, limits=httpx.Limits(max_connections=concurrency))
    slots = asyncio.Semaphore(concurrency)

    @qm.entrypoint("webhook")
    async def webhook(job: Job) -> None:
        async with slots:
            response = await client.post(
                f"{receiver}/hook", content=job.payload or b"", headers={"content-type": "application/json"}
            )
        response.raise_for_status()

    try:
        await qm.run(
            mode=QueueExecutionMode.drain,
            batch_size=batch,
            max_concurrent_tasks=concurrency if cap else None,
            log_aggregation_interval=timedelta(0),
        )
    finally:
        await client.aclose()


async def pgq_enqueue(url: str, count: int) -> None:
    from .pgq_worker import connect

    queries = await connect(url)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        bodies = [
            json.dumps(
                {"type": "invoice.paid", "timestamp": "2026-12-03T00:00:00Z", "data": payload(start + i)}
            ).encode()
            for i in range(n)
        ]
        await queries.enqueue(["webhook"] * n, bodies, [0] * n)  # type: ignore[arg-type]


def pgqueuer_once(env: BenchEnv, cfg: BenchConfig, receiver: str) -> dict[str, Any]:
    from . import pgq_worker as pgq

    count, limit, concurrency, _ = sizes(cfg)
    # As many workers as machines, each with at most MACHINE_CONCURRENCY deliveries at once.
    workers = math.ceil(limit / concurrency)
    batch = PGQ_BATCH
    database_url = env.database("pgq_e2e")
    asyncio.run(pgq.install(database_url))
    asyncio.run(pgq_enqueue(database_url, count))
    sql_rows(database_url, "VACUUM ANALYZE")
    checkpoint(database_url)
    reset_receiver(receiver)
    argv = [
        PYTHON,
        "-m",
        "bench.e2e",
        "pgq",
        "--url",
        database_url,
        "--receiver",
        receiver,
        "--concurrency",
        str(concurrency),
        "--batch",
        str(batch),
    ]
    started = time.time()
    children = [env.spawn(argv, os.environ.copy(), log_name="e2e-pgq") for _ in range(workers)]
    try:
        delivered = asyncio.run(
            wait_for_deliveries(
                receiver,
                count,
                timeout=600 if not cfg.quick else 120,
                alive=lambda: any(c.poll() is None for c in children),
            )
        )
        for child in children:
            child.wait(60)
    finally:
        for child in children:
            stop_process(child)
    stats = receiver_stats(receiver)
    completed = sql_rows(database_url, QUERIES["pgqueuer_span"])[0][0]
    seconds = stats["last"] - started
    return {
        "rate": stats["distinct"] / seconds if seconds > 0 else math.nan,
        "seconds": seconds,
        "lost": count - stats["distinct"],
        "duplicates": stats["duplicates"],
        "unparsed": stats["unparsed"],
        "completed": completed,
        "workers": workers,
        "batch": batch,
        "delivered": delivered,
    }


# ---------------------------------------------------------------------------------------------


def run(env: BenchEnv, cfg: BenchConfig) -> list[Row]:
    count, limit, concurrency, max_jobs = sizes(cfg)
    port = free_port()
    receiver = f"http://127.0.0.1:{port}"
    child = env.spawn([PYTHON, "-m", "bench.receiver", "--port", str(port)], os.environ.copy(), log_name="receiver")
    ours: list[float] = []
    ref: list[float] = []
    ratios: list[float] = []
    problems: list[str] = []
    books: list[str] = []
    try:
        wait_until(lambda: _answers(receiver), timeout=30, what="the receiver", child=child)
        for _ in range(cfg.runs):
            r = pgqueuer_once(env, cfg, receiver)
            time.sleep(0.5)
            o = ours_once(env, cfg, receiver)
            print(
                f"    e2e: ours {o['rate']:,.0f} jobs/s ({o['seconds']:.1f} s, {o['machines']} machines, "
                f"lost {o['lost']}, dup {o['duplicates']}) | pgqueuer {r['rate']:,.0f} jobs/s ({r['seconds']:.1f} s, "
                f"lost {r['lost']}, dup {r['duplicates']})",
                flush=True,
            )
            ours.append(o["rate"])
            ref.append(r["rate"])
            ratios.append(o["rate"] / r["rate"])
            books.append(
                f"ours lost {o['lost']} dup {o['duplicates']} "
                f"({o['completed']:,} completed, {o['machines']} machines); "
                f"pgqueuer lost {r['lost']} dup {r['duplicates']}"
            )
            for side, x in (("ours", o), ("pgqueuer", r)):
                if x["lost"] or x["duplicates"] or x["unparsed"] or x["completed"] != count:
                    problems.append(
                        f"{side}: lost {x['lost']}, duplicated {x['duplicates']}, unparsed {x['unparsed']}, "
                        f"completed {x['completed']}/{count}" + (f" states {x['states']}" if "states" in x else "")
                    )
    finally:
        stop_process(child)
    ratio = Spread.of(ratios)
    machines = math.ceil(limit / concurrency)
    note = (
        f"concurrency {limit} on both sides: ours queue limit {limit}, MACHINE_CONCURRENCY={concurrency} "
        f"({machines} machines at once), MACHINE_MAX_JOBS={max_jobs}, real dispatcher + local launcher, "
        f"real `webhooks` function (signed POST); pgqueuer: {machines} worker processes (psycopg driver, batch "
        f"{PGQ_BATCH}), at most {concurrency} POSTs at once each (semaphore), one httpx.AsyncClient POST per job; "
        "pgqueuer's psycopg driver holds its connection up to 1 s in notifies(timeout=1.0) when NOTIFYs are quiet; "
        f"spans from start (boots included) to the last delivery "
        f"the receiver saw. Counted at the receiver per run: " + " | ".join(books)
    )
    if problems:
        note += "; PROBLEMS: " + "; ".join(problems)
    ours_problems = sum(1 for b in problems if b.startswith("ours"))
    return [
        Row(
            f"end to end: {count:,} webhooks to a loopback receiver, jobs/s",
            Spread.of(ours).fmt(" jobs/s"),
            Spread.of(ref).fmt(" jobs/s") + f" (pgqueuer + httpx, concurrency {limit})",
            ratio.fmt("x", 2),
            f"≥ {TARGET:g}; 0 lost, 0 duplicated",
            verdict(ratio.median >= TARGET and ours_problems == 0),
            note,
        )
    ]


def _answers(receiver: str) -> bool:
    try:
        receiver_stats(receiver)
        return True
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pgq")
    p.add_argument("--url", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--cap", action="store_true", help="cap with max_concurrent_tasks instead of a semaphore")
    args = parser.parse_args(argv)
    asyncio.run(pgq_worker(args.url, args.receiver, args.concurrency, args.batch, args.cap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
