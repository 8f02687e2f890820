"""A tenant in turn whose due jobs are all for a host whose rate window is full gives its turn to
the next tenant, for that claim, and keeps it for when the window opens (migration 0018; from the
final review of 0017: two such tenants in turn emptied every claim of one for the rest of the
window while a third tenant's job for a free host waited)."""

from __future__ import annotations

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import claim, claim_while_held, insert, queue_with

FULL = "https://full.example/x"
FREE = "https://free.example/x"

# One job per host per minute: the first claim of a job for FULL fills its window.
PER_HOST = {
    "fair": "fair = true, rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'",
    "fair-capped": "fair = true, tenant_limit = 1000, rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'",
    "fifo": "fair = false, rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'",
}


def fill_the_window(conn: psycopg.Connection) -> None:
    insert(conn, "a0", url=FULL)
    assert len(claim(conn, 1)) == 1


@pytest.mark.parametrize("blocked", [2, 5, 40])
@pytest.mark.parametrize("rules", PER_HOST.values(), ids=PER_HOST.keys())
def test_a_claim_of_one_passes_over_tenants_held_back_by_a_full_window(
    database_url: str, rules: str, blocked: int
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules)
        fill_the_window(conn)
        for i in range(blocked):
            insert(conn, f"b{i:02}", url=FULL)
        free = insert(conn, "zz", url=FREE)
        assert claim(conn, 1) == [free]


@pytest.mark.parametrize("rules", PER_HOST.values(), ids=PER_HOST.keys())
def test_a_claim_of_two_gets_both_free_jobs_behind_blocked_tenants(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules.replace("rate_limit = 1,", "rate_limit = 2,"))
        insert(conn, "a0", url=FULL)
        insert(conn, "a0", url=FULL)
        assert len(claim(conn, 2)) == 2
        for i in range(6):
            insert(conn, f"b{i}", url=FULL)
        free = {insert(conn, "y1", url=FREE), insert(conn, "y2", url=FREE)}
        assert set(claim(conn, 2)) == free


def test_a_tenant_passed_over_keeps_its_turn_for_when_the_window_opens(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        waiting = insert(conn, "b1", url=FULL)
        first = insert(conn, "zz", url=FREE)
        insert(conn, "zz", url="https://free2.example/x")
        assert claim(conn, 1) == [first]
        # The window opens (its minute passes): b1, passed over while it could not go, is next in
        # turn, ahead of zz's second job.
        conn.execute("UPDATE rate_windows SET starts = '{}' WHERE queue = 'race'")
        assert claim(conn, 1) == [waiting]


@pytest.mark.parametrize("rules", PER_HOST.values(), ids=PER_HOST.keys())
def test_nothing_is_claimed_while_every_due_job_waits_for_a_full_window(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules)
        fill_the_window(conn)
        for i in range(40):
            insert(conn, f"b{i:02}", url=FULL)
        assert claim(conn, 3) == []
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'executing'").fetchone() == (1,)


@pytest.mark.parametrize("rules", PER_HOST.values(), ids=PER_HOST.keys())
def test_a_tenant_that_lost_the_window_to_a_held_job_gets_it(database_url: str, rules: str) -> None:
    # a1's job, first in turn and for the window's one slot, is held elsewhere (a cancel in flight):
    # b1's job for the same host is not passed over as if the window were full; it takes the slot.
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        held = insert(setup, "a1", url=FULL)
        other = insert(setup, "b1", url=FULL)
    assert claim_while_held(database_url, [held], 1) == [other]
