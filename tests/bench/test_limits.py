"""bench.limits' alterations do what its figures say they do: the stripped schema has lost the
indexes, triggers and CHECKs it names and nothing the claim and completion need; the lockless
claim takes no queue row lock, claims each job once, and ignores the queue's limit."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import bench.harness as harness
from bench.harness import QUERIES as BENCH_QUERIES
from bench.limits import KEPT_INDEXES, AlteredEnv, install_lockless_claim, main, strip_per_job_work
from shared.db.sql import QUERIES


def seed(conn: psycopg.Connection[Any], count: int, *, limit: int = 10) -> None:
    conn.execute('INSERT INTO queues (name, "limit", fair) VALUES (%s, %s, true)', ("q", limit))
    conn.execute(
        BENCH_QUERIES["seed_jobs"],
        {"queue": "q", "worker": "echo", "tenant_id": "t", "args": Jsonb({}), "count": count},
    )


def claim(conn: psycopg.Connection[Any], machine: str, n: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        QUERIES["claim_jobs"], {"queue": "q", "machine_id": machine, "max_jobs": n, "prefer_id": None}
    ).fetchall()
    return [dict(r) for r in rows]


def test_the_stripped_schema_keeps_only_what_claims_and_completions_need(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        before = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")}
        assert set(KEPT_INDEXES) < before  # there is something to strip
        strip_per_job_work(database_url)
        after = {r["indexname"] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")}
        assert after == set(KEPT_INDEXES)
        triggers = {
            r["tgname"]: r["before"]
            for r in conn.execute(
                "SELECT tgname, (tgtype::int & 2) <> 0 AS before FROM pg_trigger"
                " WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal"
            )
        }
        assert all(before or name.startswith("jobs_notify_") for name, before in triggers.items())
        assert any(name.startswith("jobs_notify_") for name in triggers)  # machines still wake
        checks = conn.execute(
            "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = 'jobs'::regclass AND contype = 'c'"
        )
        assert checks.fetchone() == {"n": 0}

        seed(conn, 5)
        claimed = claim(conn, "m1", 3)
        assert len(claimed) == 3 and all(j["claim_token"] is not None for j in claimed)
        done = conn.execute(
            QUERIES["complete_jobs"],
            {
                "job_ids": [j["id"] for j in claimed],
                "claim_tokens": [j["claim_token"] for j in claimed],
                "results": [Jsonb({}) for _ in claimed],
                "progress": [None for _ in claimed],
                "machine_id": "m1",
            },
        ).fetchall()
        assert {r["id"] for r in done} == {j["id"] for j in claimed}
        states = conn.execute("SELECT state, count(*) AS n FROM jobs GROUP BY state ORDER BY state").fetchall()
        assert states == [{"state": "available", "n": 2}, {"state": "completed", "n": 3}]


def test_the_lockless_claim_passes_a_held_queue_row_and_its_limit(database_url: str) -> None:
    install_lockless_claim(database_url)

    def claimer(name: str) -> list[dict[str, Any]]:
        # A claim that waits for the queue's row gives up after 3 s (and the test says so).
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row, options="-c lock_timeout=3s") as own:
            return claim(own, name, 10)

    with (
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn,
        psycopg.connect(database_url, row_factory=dict_row) as holder,
    ):
        seed(conn, 30, limit=2)
        holder.execute("SELECT * FROM queues WHERE name = 'q' FOR UPDATE")  # what every real claim waits for
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(claimer, f"m{i}") for i in range(3)]
            try:
                batches = [f.result(timeout=30) for f in futures]
            except psycopg.errors.LockNotAvailable:
                raise AssertionError("a lockless claim waited for the queue's row") from None
        holder.rollback()
    ids = [j["id"] for batch in batches for j in batch]
    assert len(ids) == 30 and len(set(ids)) == 30  # every job once, past the queue's limit of 2


@pytest.mark.timeout(300)
def test_every_experiment_runs_at_tiny_sizes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bench.limits --quick` end to end (its figures mean nothing), 32 claimers so the
    wait sampler runs too."""
    monkeypatch.setenv("BENCH_CLAIMERS", "1,32")
    assert main(["--quick", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    for line in (
        "engine full schema:",
        "engine stripped:",
        "engine pgqueuer:",
        "pickup full schema:",
        "pickup stripped:",
    ):
        assert f"\n{line}" in out, out
    claimers_32 = next(line for line in out.splitlines() if line.startswith("claimers 32:"))
    # Samples were taken for both claims (a sampler that took none would print nothing after them).
    assert re.search(r"waits, real: .*\d+%.*; lockless: .*\d+%", claimers_32), claimers_32


@pytest.mark.timeout(120)
def test_a_failed_start_leaves_no_postgres_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the cluster started (here the template's migration) still stops it."""
    envs: list[AlteredEnv] = []
    real_start = AlteredEnv.start

    def start(self: AlteredEnv) -> None:
        envs.append(self)
        real_start(self)

    def broken_migrate(url: str) -> None:
        raise RuntimeError("migration failed")

    monkeypatch.setattr(AlteredEnv, "start", start)
    monkeypatch.setattr(harness, "migrate", broken_migrate)
    with pytest.raises(RuntimeError, match="migration failed"):
        main(["--quick", "--runs", "1", "engine"])
    (env,) = envs
    try:
        assert not (env.pg.data_dir / "postmaster.pid").exists(), "the bench's Postgres is still running"
    finally:
        env.close()
