"""A tenant in turn whose next due jobs are all for hosts whose rate windows are full gives its turn
to the tenants after it, for that claim, and keeps it for when a window opens (migration 0018; from
the final review of 0017: two such tenants in turn emptied every claim of one for the rest of the
window while a third tenant's job for a free host waited). Some cases are from the review of 0018.

A claim passes over at most 32 such tenants beyond twice its size (bounded work; the pages it reads
are counted in test_claim_plans_with_rate_blocked_tenants.py)."""

from __future__ import annotations

import threading
from collections import Counter

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


@pytest.mark.parametrize("blocked", [2, 5, 33])
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


def test_a_free_job_past_a_tenants_21st_is_reached_by_a_claim_of_two(database_url: str) -> None:
    # The pick reads a tenant's next (its share of the claim + 20) jobs; the check that passes
    # tenants over read only 21 in 0018's first version, and dropped this tenant (0017 claimed it).
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        for _ in range(21):
            insert(conn, "t1", url=FULL)
        free = insert(conn, "t1", url=FREE)
        assert claim(conn, 2) == [free]
        for _ in range(3):
            insert(conn, "t2", url=FULL)
        another = insert(conn, "t1", url="https://free2.example/x")
        assert claim(conn, 5) == [another]


def test_tenants_that_lose_a_shared_window_within_the_claim_do_not_leave_it_short(database_url: str) -> None:
    # a-d want one host with room for one; e wants another: a claim of two gets a's job and e's
    # (0017 and 0018's first version returned a's alone: b-d took the claim's places in turn).
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        first = insert(conn, "a", url=FULL)
        for t in "bcd":
            insert(conn, t, url=FULL)
        free = insert(conn, "e", url=FREE)
        assert set(claim(conn, 2)) == {first, free}


def test_a_tenant_passed_over_is_not_overtaken_twice_by_a_heavier_tenant(database_url: str) -> None:
    # b is held back while z (weight 3) takes three claims; when the window opens, b is first.
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        waiting = insert(conn, "b", url=FULL)
        for i in range(6):
            insert(conn, "z", url=f"https://f{i}.example/x")
        conn.execute(
            "INSERT INTO queue_tenants (queue, tenant_id, pass, active, weight) VALUES ('race', 'z', 0, true, 3)"
            " ON CONFLICT (queue, tenant_id) DO UPDATE SET weight = 3"
        )
        conn.execute("UPDATE queues SET tenants_scanned_at = NULL")
        for _ in range(3):
            assert len(claim(conn, 1)) == 1
        conn.execute("UPDATE rate_windows SET starts = '{}' WHERE queue = 'race'")
        assert claim(conn, 1) == [waiting]


GENERAL = {
    "fair-capped": "fair = true, tenant_limit = 1000",
    "fair-tenant-key": "fair = true, rate_limit = 1000, rate_period_seconds = 60, rate_key = 'tenant'",
    "fair-host-key": "fair = true, rate_limit = 1000, rate_period_seconds = 60, rate_key = 'host:url'",
}


@pytest.mark.parametrize("rules", GENERAL.values(), ids=GENERAL.keys())
def test_a_tenant_in_turn_with_only_future_jobs_does_not_empty_a_claim_of_one(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules)
        insert(conn, "a-later", delay=3600)
        due = insert(conn, "b-now")
        assert claim(conn, 1) == [due]


def test_a_domain_key_passes_over_tenants_as_the_pick_spells_the_domain(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "fair = true, rate_limit = 1, rate_period_seconds = 60, rate_key = 'domain:to'")

        def put(tenant: str, to: str) -> int:
            row = conn.execute(
                "INSERT INTO jobs (queue, worker, tenant_id, args)"
                " VALUES ('race', 'echo', %s, jsonb_build_object('to', %s::text)) RETURNING id",
                (tenant, to),
            ).fetchone()
            assert row is not None
            return int(row[0])

        put("a0", "x@Full.Example.")
        assert len(claim(conn, 1)) == 1
        put("b1", "Y <y@full.example>")
        put("b2", "z@FULL.example")
        free = put("c", "w@free.example")
        assert claim(conn, 1) == [free]
        # no address at all: one window (key '') for every such job
        without = {put("d1", "nobody"), put("d2", "nobody")}
        got = claim(conn, 2)
        assert len(got) == 1 and got[0] in without, got


def test_tenants_whose_only_free_job_is_held_elsewhere_give_their_turn(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        held = []
        for t in ("b1", "b2", "b3"):
            insert(conn, t, url=FULL)
            held.append(insert(conn, t, url=f"https://{t}.example/x"))
            insert(conn, t, url=FULL)
        free = insert(conn, "zz", url="https://zz.example/x")
    assert claim_while_held(database_url, held, 1) == [free]


def test_the_launch_job_goes_first_behind_blocked_tenants(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        for i in range(30):
            insert(conn, f"b{i:02}", url=FULL)
        insert(conn, "c", url="https://c.example/x")
        launch = insert(conn, "zz", url="https://zz.example/x")
        got = claim(conn, 2, prefer=launch)
        assert launch in got and len(got) == 2, got  # (rows come back in no set order)


def test_a_launch_job_waiting_for_a_full_window_does_not_empty_the_claim(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        launch = insert(conn, "b0", url=FULL)
        for i in range(5):
            insert(conn, f"b{i + 1}", url=FULL)
        free = insert(conn, "zz", url=FREE)
        assert claim(conn, 1, prefer=launch) == [free]


def test_a_launch_job_held_elsewhere_then_blocked_tenants(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        launch = insert(conn, "b0", url="https://l.example/x")
        insert(conn, "b0", url=FULL)
        for i in range(5):
            insert(conn, f"b{i + 1}", url=FULL)
        free = insert(conn, "zz", url=FREE)
    assert claim_while_held(database_url, [launch], 1, prefer=launch) == [free]


def test_capped_tenants_behind_blocked_hosts(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair-capped"].replace("tenant_limit = 1000", "tenant_limit = 1"))
        fill_the_window(conn)
        for i in range(8):
            insert(conn, f"b{i}", url=FULL)
        frees = set()
        for t in ("x", "y"):
            frees.add(insert(conn, t, url=f"https://{t}1.example/x"))
            insert(conn, t, url=f"https://{t}2.example/x")
        assert set(claim(conn, 3)) == frees


# From the second review of 0018.


def test_chosen_tenants_whose_free_job_only_the_check_sees_leave_a_claim_short(database_url: str) -> None:
    # Between 0018's reviews the filter read room + 20 jobs (room = the claim's size) and the pick
    # fetch + 20, fetch = least(room, v_free - turn + 1) being 1 past the first turn: with a claim
    # of 2, tenants at turn 2..4 whose free job is their 22nd passed the filter, took the claim's
    # places and yielded nothing; z's free job waited. (0019: both read a tenant's share + 20, the
    # pick at least as far as the filter.)
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        fill_the_window(conn)
        first = insert(conn, "x1", url="https://free1.example/x")
        for t in ("x2", "x3", "x4"):
            for _ in range(21):
                insert(conn, t, url=FULL)
            insert(conn, t, url=f"https://free-{t}.example/x")
        insert(conn, "z9", url="https://free-z.example/x")
        got = claim(conn, 2)
        assert first in got
        assert len(got) == 2, got  # z's free job, or x2's, could go


def test_rate_limit_two_with_a_held_pick_and_losers_across_passes(database_url: str) -> None:
    rules = PER_HOST["fair"].replace("rate_limit = 1,", "rate_limit = 2,")
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules)
        ids = {t: insert(conn, t, url=FULL) for t in "abcd"}
        free = insert(conn, "e", url="https://free.example/x")
    got = claim_while_held(database_url, [ids["a"]], 3)
    assert len(got) == 3 and free in got
    assert ids["a"] not in got
    assert sum(1 for t in "bcd" if ids[t] in got) == 2


def test_many_groups_sharing_hosts_never_exceed_a_window_and_fill_what_they_can(database_url: str) -> None:
    # Groups of tenants, each group for one host (limit 1), more tenants per group than a claim's
    # places: every pass loses windows, and the claim passes again.
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        for g in range(5):
            for i in range(5):
                insert(conn, f"g{g}-{i}", url=f"https://h{g}.example/x")
        got = claim(conn, 4)
        hosts = [
            r[0] for r in conn.execute("SELECT args->>'url' FROM jobs WHERE state = 'executing' AND queue = 'race'")
        ]
        assert max(Counter(hosts).values()) == 1, hosts
        assert len(got) == 4, got
        # every tenant served is the first of its group in turn
        tenants = sorted(r[0] for r in conn.execute("SELECT tenant_id FROM jobs WHERE id = ANY (%s)", (got,)))
        assert all(t.endswith("-0") for t in tenants), tenants
        # and no tenant's pass moved unless it was served
        moved = {
            r[0]
            for r in conn.execute(
                "SELECT tenant_id FROM queue_tenants WHERE queue = 'race'"
                " AND pass > (SELECT min(pass) FROM queue_tenants WHERE queue = 'race')"
            )
        }
        assert moved == set(tenants), (moved, tenants)


def test_weighted_tenant_is_not_served_twice_while_a_loser_with_room_elsewhere_waits(database_url: str) -> None:
    # a (weight 1) and b (weight 1) want FULL-ish host h (room 1); c wants h too; w has jobs for free
    # hosts. A claim of 3: a gets h, b and c lose; the extra pass must not hand w a second job ahead
    # of a tenant with a free job at the same turn.
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, PER_HOST["fair"])
        ha = insert(conn, "a", url="https://h.example/x")
        insert(conn, "b", url="https://h.example/x")
        insert(conn, "c", url="https://h.example/x")
        insert(conn, "c", url="https://cfree.example/x")
        w1 = insert(conn, "w", url="https://w1.example/x")
        insert(conn, "w", url="https://w2.example/x")
        got = claim(conn, 3)
        assert ha in got and w1 in got
        assert len(got) == 3
        tenants = Counter(r[0] for r in conn.execute("SELECT tenant_id FROM jobs WHERE id = ANY (%s)", (got,)))
        assert tenants["c"] == 1, tenants


def test_concurrent_claimers_never_exceed_a_window_nor_claim_twice(database_url: str) -> None:
    rules = PER_HOST["fair"].replace("rate_limit = 1,", "rate_limit = 2,") + ", tenant_limit = 3"
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules, limit=40)
        for t in range(12):
            for k in range(6):
                insert(conn, f"t{t:02}", url=f"https://h{(t + k) % 9}.example/x", priority=k % 2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as c:
                for _ in range(8):
                    results.append(claim(c, 3))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    all_ids = [i for r in results for i in r]
    assert len(all_ids) == len(set(all_ids))
    with psycopg.connect(database_url, autocommit=True) as conn:
        per_host = Counter(
            r[0] for r in conn.execute("SELECT args->>'url' FROM jobs WHERE state = 'executing' AND queue = 'race'")
        )
        per_tenant = Counter(
            r[0] for r in conn.execute("SELECT tenant_id FROM jobs WHERE state = 'executing' AND queue = 'race'")
        )
    assert max(per_host.values()) <= 2, per_host
    assert max(per_tenant.values()) <= 3, per_tenant


def x1_free_and_x2_held(conn: psycopg.Connection, held: int) -> tuple[int, int, int]:
    """x1: two jobs for free hosts; x2: `held` jobs for the full host, then one for a free host."""
    queue_with(conn, PER_HOST["fair"])
    fill_the_window(conn)
    a1 = insert(conn, "x1", url="https://free1.example/x")
    a2 = insert(conn, "x1", url="https://free1b.example/x")
    for _ in range(held):
        insert(conn, "x2", url=FULL)
    return a1, a2, insert(conn, "x2", url="https://free2.example/x")


def test_a_tenant_is_not_served_twice_in_a_claim_while_the_next_in_turn_has_a_free_job(database_url: str) -> None:
    # x2's free job is its 21st, the last row of its share at turn 2 (1) + 20: the check that
    # keeps x2 in turn reads 21 rows, and so must the pick, or x2 takes the claim's second place
    # for nothing and x1 is served at the turn after x2's (0018's second review, when the check
    # read room + 20 and the pick share + 20).
    with psycopg.connect(database_url, autocommit=True) as conn:
        a1, a2, b = x1_free_and_x2_held(conn, 20)
        got = claim(conn, 2)
        assert set(got) == {a1, b}, (got, a2)


def test_a_free_job_past_a_tenants_share_is_claimed_once_its_share_reaches_it(database_url: str) -> None:
    # x2's free job is its 22nd, past its share at turn 2 + 20 (0019: each tenant is read for its
    # share + 20, so a claim's reading does not grow with the square of its size): the claim of
    # two passes x2 over. x2 keeps its turn and falls behind x1 (served twice), so in the next
    # claim its share is 2 (its turn and the one after come before x1's next), and it is reached.
    with psycopg.connect(database_url, autocommit=True) as conn:
        a1, a2, b = x1_free_and_x2_held(conn, 21)
        assert set(claim(conn, 2)) == {a1, a2}
        a3 = insert(conn, "x1", url="https://free1c.example/x")
        assert set(claim(conn, 2)) == {b, a3}
