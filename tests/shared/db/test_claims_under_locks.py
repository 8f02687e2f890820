"""Claims against rows someone else holds, the job a machine was launched for, and edge values,
under every claim rule (from an adversarial review of migration 0015; fixed in 0017).

A job locked by another transaction (a cancel in flight, an edit of the row) must be passed over
and the next due job taken, on every path, as FIFO always did; the launch's job (prefer_id, the
machine's JOB_ID) is claimed first even when its tenant is new since the last listing; and one
host is one rate window however its URL spells the name.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

# Every path of claim_jobs: FIFO, fair alone, and the general path (caps, rate limits).
RULES = {
    "fifo": "fair = false",
    "fair": "fair = true",
    "fair-capped": "fair = true, tenant_limit = 1000",
    "fifo-capped": "fair = false, tenant_limit = 1000",
    "fair-rate": "fair = true, rate_limit = 1000, rate_period_seconds = 60, rate_key = 'tenant'",
}


def queue_with(conn: psycopg.Connection, rules: str, *, limit: int = 1000) -> None:
    conn.execute("INSERT INTO queues (name, \"limit\") VALUES ('race', %s), ('other', 10)", (limit,))
    conn.execute(f"UPDATE queues SET {rules} WHERE name = 'race'")


def insert(
    conn: psycopg.Connection,
    tenant: str,
    *,
    queue: str = "race",
    priority: int = 0,
    delay: float = 0,
    url: str = "https://a.example/x",
) -> int:
    row = conn.execute(
        "INSERT INTO jobs (queue, worker, tenant_id, args, priority, scheduled_at)"
        " VALUES (%s, 'echo', %s, jsonb_build_object('url', %s::text), %s, now() + make_interval(secs => %s))"
        " RETURNING id",
        (queue, tenant, url, priority, delay),
    ).fetchone()
    assert row is not None
    return int(row[0])


def claim(conn: psycopg.Connection, max_jobs: int, prefer: int | None = None, queue: str | None = "race") -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM claim_jobs(%s, 'm-1', %s, %s)", (queue, max_jobs, prefer))]


@contextlib.contextmanager
def held_elsewhere(database_url: str, ids: list[int]) -> Iterator[psycopg.Connection]:
    """A claimer's connection (rolled back at the end) while another transaction holds the rows of
    `ids` locked, as a cancel in flight does."""
    with psycopg.connect(database_url) as holder, psycopg.connect(database_url) as claimer:
        holder.execute("SELECT 1 FROM jobs WHERE id = ANY (%s) FOR UPDATE", (ids,))
        try:
            yield claimer
        finally:
            holder.rollback()
            claimer.rollback()


def claim_while_held(database_url: str, ids: list[int], max_jobs: int, prefer: int | None = None) -> list[int]:
    with held_elsewhere(database_url, ids) as claimer:
        return claim(claimer, max_jobs, prefer=prefer)


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_a_claim_passes_over_a_job_another_transaction_has_locked(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        head = insert(setup, "t1", priority=0)
        second = insert(setup, "t1", priority=1)
        other = insert(setup, "t2", priority=5)
    got = claim_while_held(database_url, [head], 1)
    assert len(got) == 1 and got[0] in (second, other)  # failed before 0017 on every path but FIFO: []


@pytest.mark.parametrize("rules", [r for k, r in RULES.items() if k != "fifo"], ids=[k for k in RULES if k != "fifo"])
def test_a_claim_of_one_is_never_empty_while_another_writer_keeps_touching_one_job(
    database_url: str, rules: str
) -> None:
    # An update that leaves the job available, over and over (FIFO: test_claim_plans_by_rule.py).
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        touched = insert(setup, "t1", priority=0)
        insert(setup, "t1", priority=1)
        insert(setup, "t2", priority=5)
        insert(setup, "t2", priority=6)
        setup.execute("VACUUM ANALYZE jobs")
    stop = threading.Event()

    def touch() -> None:
        with psycopg.connect(database_url, autocommit=True) as writer:
            while not stop.is_set():
                writer.execute("UPDATE jobs SET meta = meta WHERE id = %s", (touched,))

    thread = threading.Thread(target=touch)
    thread.start()
    empty = tries = 0
    try:
        with psycopg.connect(database_url) as claimer:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and tries < 150:
                tries += 1
                claimer.execute("UPDATE queues SET tenants_scanned_at = NULL WHERE name = 'race'")
                empty += not claim(claimer, 1)
                claimer.rollback()
    finally:
        stop.set()
        thread.join()
    assert tries >= 20
    assert empty == 0, f"{empty} of {tries} claims of one came back empty with three untouched jobs available"


@pytest.mark.parametrize("rules", [r for k, r in RULES.items() if k != "fifo"], ids=[k for k in RULES if k != "fifo"])
def test_the_launch_job_of_a_tenant_new_since_the_listing_is_claimed_first(database_url: str, rules: str) -> None:
    # architecture.md: JOB_ID, "the job that caused the launch; claimed first if still available".
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules)
        for _ in range(5):
            insert(conn, "busy")
            insert(conn, "busy-too")
        assert claim(conn, 1)  # another machine's claim lists the tenants
        new = insert(conn, "newcomer", priority=9)
        assert claim(conn, 1, prefer=new) == [new]  # within the listing's 50 ms (failed before 0017)
        assert claim(conn, 2) != []  # the rest go on as before


@pytest.mark.parametrize("max_jobs", [0, -1, -(2**31)])
def test_a_claim_of_nothing_starts_nothing(database_url: str, max_jobs: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "fair = true", limit=10)
        job = insert(conn, "t")
        assert claim(conn, max_jobs, prefer=job) == []


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_the_largest_claim_stays_within_the_queue_limit(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules, limit=7)
        for tenant in ("a", "b", "c"):
            for _ in range(6):
                insert(conn, tenant)
        assert len(claim(conn, 2**31 - 1)) == 7
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'executing'").fetchone() == (7,)


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
@pytest.mark.parametrize("which", ["other-queue", "not-due", "cancelled", "capped", "missing"])
def test_a_launch_job_that_cannot_be_claimed_starts_nothing_of_its_own(
    database_url: str, rules: str, which: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules, limit=10)
        conn.execute("INSERT INTO queue_tenants (queue, tenant_id, max_running) VALUES ('race', 'capped', 0)")
        ready = insert(conn, "t", priority=5)
        prefer = {
            "other-queue": lambda: insert(conn, "t", queue="other"),
            "not-due": lambda: insert(conn, "t", delay=3600),
            "cancelled": lambda: insert(conn, "t"),
            "capped": lambda: insert(conn, "capped"),
            "missing": lambda: 10**12,
        }[which]()
        if which == "cancelled":
            conn.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = %s", (prefer,))
        assert claim(conn, 5, prefer=prefer) == [ready]
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'executing'").fetchone() == (1,)


def test_a_queue_that_does_not_exist_claims_nothing(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "fair = true", limit=10)
        job = insert(conn, "t")
        assert claim(conn, 5, prefer=job, queue="nope") == []
        assert claim(conn, 5, prefer=job, queue=None) == []


@pytest.mark.parametrize(
    "url", ["https://h1.example./b", "https://h1.example../b", "https://H1.Example:443/c", "https://u@h1.example/d"]
)
def test_one_host_is_one_rate_window_however_its_url_spells_it(database_url: str, url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'", limit=100)
        insert(conn, "t", url="https://h1.example/a")
        insert(conn, "t", url=url)
        assert len(claim(conn, 5)) == 1  # `h1.example.` had a window of its own before 0017
