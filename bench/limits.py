"""What stands in the way of the engine targets: `python -m bench.limits [engine] [pickup] [claimers] [--runs N]`.

Not a metric of `make bench`: each experiment takes something the service keeps away, on a
throwaway database of its own, to measure what that thing costs. Nothing here is a configuration
to run with.

- `engine`: the engine row's drain (one machine, concurrency 10, 5,000 no-op jobs) with the full
  schema, and with the per-job work the service adds stripped from the database (`STRIP_SQL`: every
  index of `jobs` the claim and the lifeline do not read, every AFTER trigger on `jobs` but the
  NOTIFYs that wake machines, every CHECK of `jobs`), and pgqueuer's drain; jobs/s and CPU per job
  of the client (the machine, or pgqueuer's process, from its first claim to its exit) and of every
  process of the Postgres cluster. 3x pgqueuer needs machine + Postgres within cores / (3 x
  pgqueuer's jobs/s) of CPU per job, and the machine (one process) within 1 / (3 x pgqueuer's jobs/s).
- `pickup`: the pickup row's p50 (one job at a time, from before the INSERT and from its commit's
  acknowledgement) with the full and the stripped schema.
- `claimers`: the claimers row's harness (ours only) at 1/8/32/128 claimers with the real
  `claim_jobs` and with `LOCKLESS_CLAIM_SQL` (a FIFO claim that takes no queue row lock and so
  keeps no fleet-wide limit, and skips what the real one does under it: the running count, the
  pause and cap checks, the tenant listing of fair queues, the launch job), and the wait events of
  the active backends sampled at 32 and 128.

Runs alternate full / stripped (or real / lockless) so the box's drift falls on both.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from . import claimers, engine, pickup
from .harness import (
    TEMPLATE_DB,
    BenchConfig,
    BenchEnv,
    Spread,
)

# The indexes the claim (FIFO and fair), the running count and the lifeline read.
KEPT_INDEXES = ("jobs_pkey", "jobs_claim_idx", "jobs_tenant_claim_idx", "jobs_executing_idx", "jobs_attempted_by_idx")

STRIP_SQL = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT indexname FROM pg_indexes
              WHERE schemaname = current_schema() AND tablename = 'jobs'
                AND indexname <> ALL (ARRAY[{kept}]) LOOP
        EXECUTE format('DROP INDEX %I', r.indexname);
    END LOOP;
    -- AFTER triggers only (BEFORE ones set the claim token), and not the machines' wake-ups.
    FOR r IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal AND (tgtype::int & 2) = 0
                AND tgname NOT LIKE 'jobs\\_notify\\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON jobs', r.tgname);
    END LOOP;
    FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = 'jobs'::regclass AND contype = 'c' LOOP
        EXECUTE format('ALTER TABLE jobs DROP CONSTRAINT %I', r.conname);
    END LOOP;
END
$$;
"""

LOCKLESS_CLAIM_SQL = """
CREATE OR REPLACE FUNCTION claim_jobs(p_queue text, p_machine text, p_max_jobs integer, p_prefer_id bigint)
RETURNS SETOF jobs LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_sort = off
SET jit = off
AS $$
DECLARE
    v_ctids tid[];
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    v_ctids := ARRAY(SELECT j.ctid FROM jobs j
                      WHERE j.queue = p_queue AND j.state = 'available' AND j.scheduled_at <= v_now
                      ORDER BY j.priority, j.scheduled_at, j.id
                      LIMIT p_max_jobs
                      FOR UPDATE SKIP LOCKED);
    RETURN QUERY
    UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                    attempted_at = v_now, heartbeat_at = v_now
     WHERE jobs.ctid = ANY (v_ctids)
    RETURNING jobs.*;
END
$$;
"""


# An active backend's wait, with the table of the lock it waits for when there is one
# ("Lock:tuple on queues": the queue's row, which every real claim takes).
_WAITS = """
SELECT coalesce(a.wait_event_type || ':' || a.wait_event, 'CPU'),
       (SELECT l.relation::bigint FROM pg_locks l
         WHERE l.pid = a.pid AND NOT l.granted AND l.relation IS NOT NULL LIMIT 1),
       count(*)
  FROM pg_stat_activity a
 WHERE a.backend_type = 'client backend' AND a.state = 'active' AND a.pid <> pg_backend_pid()
 GROUP BY 1, 2
"""


def strip_per_job_work(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(STRIP_SQL.replace("{kept}", ", ".join(f"'{name}'" for name in KEPT_INDEXES)))


def install_lockless_claim(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(LOCKLESS_CLAIM_SQL)


class AlteredEnv(BenchEnv):
    """A BenchEnv whose new databases get an alteration applied inside `altered(...)`."""

    _alter: Callable[[str], None] | None = None

    @contextlib.contextmanager
    def altered(self, alter: Callable[[str], None] | None) -> Iterator[None]:
        self._alter = alter
        try:
            yield
        finally:
            self._alter = None

    def database(self, prefix: str) -> str:
        url = super().database(prefix)
        if self._alter is not None:
            self._alter(url)
        return url


def _spread(values: list[float]) -> str:
    return Spread.of(values).fmt()


def engine_limits(env: AlteredEnv, cfg: BenchConfig) -> None:
    count = cfg.n(5000, 100)
    seen: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    for run in range(cfg.runs):
        for name, alter in (("full schema", None), ("stripped", strip_per_job_work)):
            with env.altered(alter):
                seen[name].append(engine.ours_once(env, cfg, count))
            print(
                f"engine run {run + 1} {name}: %.0f jobs/s, machine %.0f µs, Postgres %.0f µs" % seen[name][-1],
                flush=True,
            )
        seen["pgqueuer"].append(engine.pgqueuer_once(env, count))
        print(
            f"engine run {run + 1} pgqueuer: %.0f jobs/s, client %.0f µs, Postgres %.0f µs" % seen["pgqueuer"][-1],
            flush=True,
        )
    cores = len(os.sched_getaffinity(0))
    target_rate = 3 * statistics.median(r[0] for r in seen["pgqueuer"])
    print(
        f"engine: 3x pgqueuer is {target_rate:,.0f} jobs/s: at most {cores / target_rate * 1e6:.0f} µs of CPU per job"
        f" for machine and Postgres together on {cores} cores, and at most {1 / target_rate * 1e6:.0f} µs for the"
        " machine (one process: one core at most)"
    )
    for name, rows in seen.items():
        rates, client, database = ([r[i] for r in rows] for i in range(3))
        total = statistics.median(c + d for c, d in zip(client, database, strict=True))
        print(
            f"engine {name}: jobs/s {_spread(rates)}, client {_spread(client)} µs, "
            f"Postgres {_spread(database)} µs, client + Postgres {total:.0f} µs per job"
        )


def pickup_limits(env: AlteredEnv, cfg: BenchConfig) -> None:
    samples = cfg.n(200, 10)
    seen: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for run in range(cfg.runs):
        for name, alter in (("full schema", None), ("stripped", strip_per_job_work)):
            with env.altered(alter):
                before, after_ack = pickup.ours_latencies(env, samples)
            seen[name].append((statistics.median(before), statistics.median(after_ack)))
            print(
                f"pickup run {run + 1} {name}: p50 %.2f ms, from the commit's ack %.2f ms" % seen[name][-1], flush=True
            )
    for name, rows in seen.items():
        before_ms = [r[0] for r in rows]
        after_ms = [r[1] for r in rows]
        spread = f"{statistics.median(before_ms):.2f} ms ({min(before_ms):.2f}-{max(before_ms):.2f})"
        print(f"pickup {name}: p50 {spread}, from the ack {statistics.median(after_ms):.2f} ms")


class WaitSampler:
    """Counts the wait events of the cluster's active client backends every 20 ms while `tag` is set,
    naming the table of a lock waited for. Samples with fewer than 2 active backends are left out:
    they are the run's set-up (CREATE DATABASE, seeding, VACUUM), not its claims."""

    def __init__(self, url: str, tables: dict[int, str]) -> None:
        self.url = url
        self.tables = tables
        self.tag: Any = None
        self.counts: collections.Counter[tuple[Any, str]] = collections.Counter()
        self.failed: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    tag = self.tag
                    if tag is not None:
                        rows = conn.execute(_WAITS).fetchall()
                        if sum(n for _, _, n in rows) >= 2:
                            for event, table, n in rows:
                                on = "" if table is None else f" on {self.tables.get(table, table)}"
                                self.counts[(tag, event + on)] += n
                    time.sleep(0.02)
        except Exception as exc:  # said by top(), not lost with the thread
            self.failed = exc

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def top(self, tag: Any, n: int = 4) -> str:
        if self.failed is not None:
            return f"not sampled: {self.failed!r}"
        total = sum(c for (t, _), c in self.counts.items() if t == tag) or 1
        ranked = sorted(((c, e) for (t, e), c in self.counts.items() if t == tag), reverse=True)[:n]
        return ", ".join(f"{e} {100 * c / total:.0f}%" for c, e in ranked)


def claimers_limits(env: AlteredEnv, cfg: BenchConfig) -> None:
    count, batch = cfg.n(5000, 200), claimers.batch_size()
    counts = claimers.claimer_counts(quick=cfg.quick)
    # Every run's database is a copy of the template, so a table's OID there names it in each run.
    with psycopg.connect(env.pg.url_for(TEMPLATE_DB), autocommit=True) as conn:
        tables: dict[int, str] = dict(
            conn.execute("SELECT oid::bigint, relname FROM pg_class WHERE relkind = 'r'").fetchall()
        )
    sampler = WaitSampler(env.pg.url, tables)
    seen: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    try:
        for run in range(cfg.runs):
            for k in counts:
                for name, alter in (("real claim", None), ("lockless", install_lockless_claim)):
                    sampler.tag = (k, name) if k >= 32 else None
                    with env.altered(alter):
                        rate = claimers.ours_once(env, k, count, batch)["rate"]
                    sampler.tag = None
                    seen[(k, name)].append(rate)
                    print(f"claimers run {run + 1}, {k} claimers, {name}: {rate:,.0f} jobs/s", flush=True)
    finally:
        sampler.close()
    for k in counts:
        real, lockless = _spread(seen[(k, "real claim")]), _spread(seen[(k, "lockless")])
        line = f"claimers {k}: real claim {real}, lockless {lockless} jobs/s"
        if k >= 32:
            line += f"; waits, real: {sampler.top((k, 'real claim'))}; lockless: {sampler.top((k, 'lockless'))}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", help="any of engine, pickup, claimers (default: all)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no fsync: proves the script runs")
    args = parser.parse_args(argv)
    experiments = {"engine": engine_limits, "pickup": pickup_limits, "claimers": claimers_limits}
    unknown = [name for name in args.experiments if name not in experiments]
    if unknown:
        parser.error(f"unknown experiments: {', '.join(unknown)}")
    cfg = BenchConfig(quick=args.quick, runs=args.runs)
    env = AlteredEnv(cfg)
    try:
        env.start()  # inside: a failure after the cluster is up must still stop it
        for name in dict.fromkeys(args.experiments or experiments):  # each once, in the order given
            experiments[name](env, cfg)
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
