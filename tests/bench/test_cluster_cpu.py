"""cluster_cpu_seconds read while backends exit (the engine row reads it right after
the machine exits, i.e. while the machine's pool backends are ending)."""

from __future__ import annotations

import threading
import time

import psycopg

from bench.harness import cluster_cpu_seconds
from infra.local.postgres import LocalPostgres


def test_cluster_cpu_never_goes_backwards_while_backends_exit(tmp_path) -> None:
    pg = LocalPostgres(tmp_path / "pg", durable=False)
    pg.start()
    try:
        drops: list[float] = []
        for _ in range(6):
            conns = [psycopg.connect(pg.url, autocommit=True) for _ in range(8)]
            threads = [
                threading.Thread(target=c.execute, args=("SELECT count(*) FROM generate_series(1, 4000000)",))
                for c in conns
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            last = cluster_cpu_seconds(pg)
            for c in conns:
                c.close()  # the backends exit and are reaped while we read
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                now = cluster_cpu_seconds(pg)
                if now < last - 0.05:
                    drops.append(last - now)
                last = max(last, now)
        assert not drops, f"cluster CPU read lower than an earlier read by {max(drops):.2f}s ({len(drops)} times)"
    finally:
        pg.stop()
