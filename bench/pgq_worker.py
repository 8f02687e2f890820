"""pgqueuer 1.6 reference workers, run as their own processes (like a function machine).

    python -m bench.pgq_worker drain --url URL [--batch-size 10]
        a QueueManager with a no-op entrypoint `noop`, run in drain mode: exits once the queue is
        empty and its tasks are done; prints one JSON line with its wall time.
    python -m bench.pgq_worker listen --url URL --stamp-file PATH
        a QueueManager idle on LISTEN whose entrypoint `stamp` appends `<payload> <time.time()>`
        at handler start; runs until SIGTERM.

Both use pgqueuer's psycopg driver on one autocommit connection and its defaults otherwise
(batch size 10, 30 s dequeue timeout), except that the periodic log aggregation is turned off so
pgqueuer_log keeps every pick and completion for the benchmark to read back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from datetime import timedelta

import psycopg
from pgqueuer import QueueManager
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


async def connect(url: str) -> Queries:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return Queries.from_psycopg_connection(conn)


async def install(url: str) -> None:
    """Create pgqueuer's schema in the database at `url`."""
    queries = await connect(url)
    await queries.install()


async def enqueue(url: str, entrypoint: str, count: int, *, batch: int = 1000) -> None:
    queries = await connect(url)
    left = count
    while left > 0:
        n = min(batch, left)
        await queries.enqueue([entrypoint] * n, [None] * n, [0] * n)
        left -= n


async def drain(url: str, batch_size: int) -> dict[str, float]:
    queries = await connect(url)
    qm = QueueManager(queries)

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    started = time.perf_counter()
    await qm.run(mode=QueueExecutionMode.drain, batch_size=batch_size, log_aggregation_interval=timedelta(0))
    return {"wall": time.perf_counter() - started}


async def listen(url: str, stamp_file: str) -> None:
    queries = await connect(url)
    qm = QueueManager(queries)

    @qm.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        started = time.time()
        fd = os.open(stamp_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{(job.payload or b'').decode()} {started:.6f}\n".encode())
        finally:
            os.close(fd)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    loop.add_signal_handler(signal.SIGINT, qm.shutdown.set)
    await qm.run(log_aggregation_interval=timedelta(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgq_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drain")
    d.add_argument("--url", required=True)
    d.add_argument("--batch-size", type=int, default=10)
    li = sub.add_parser("listen")
    li.add_argument("--url", required=True)
    li.add_argument("--stamp-file", required=True)
    args = parser.parse_args(argv)
    if args.command == "drain":
        print(json.dumps(asyncio.run(drain(args.url, args.batch_size))))
    else:
        asyncio.run(listen(args.url, args.stamp_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
