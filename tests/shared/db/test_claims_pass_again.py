"""The general path's passes after a picked row was held elsewhere (0017): the launch's job takes
one slot, once, and a held launch job leaves the claim to the tenant whose turn it is. From an
adversarial review of 0017's first version."""

from __future__ import annotations

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import claim, claim_while_held, held_elsewhere, insert, queue_with

GENERAL = {
    "fifo-capped": "fair = false, tenant_limit = 1000",
    "fair-capped": "fair = true, tenant_limit = 1000",
    "fair-rate": "fair = true, rate_limit = 1000, rate_period_seconds = 60, rate_key = 'tenant'",
}


@pytest.mark.parametrize("rules", GENERAL.values(), ids=GENERAL.keys())
def test_the_launch_job_claimed_in_pass_one_does_not_take_a_slot_in_the_next_pass(
    database_url: str, rules: str
) -> None:
    # max_jobs 2 with the launch's job P: pass 1 picks P and the head X, which another transaction
    # holds; it claims P, then picks again without X for the one free slot. Y is due and free.
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        x = insert(setup, "t1", priority=0)
        y = insert(setup, "t1", priority=1)
        p = insert(setup, "t2", priority=5)
    got = claim_while_held(database_url, [x], 2, prefer=p)
    assert sorted(got) == sorted([p, y])


FAIR_GENERAL = {
    "fair-capped": "fair = true, tenant_limit = 1000",
    "fair-rate": "fair = true, rate_limit = 1000, rate_period_seconds = 60, rate_key = 'tenant'",
}


@pytest.mark.parametrize("rules", FAIR_GENERAL.values(), ids=FAIR_GENERAL.keys())
def test_a_launch_job_held_elsewhere_leaves_the_claim_to_the_tenant_whose_turn_it_is(
    database_url: str, rules: str
) -> None:
    # t1 is behind (pass 0), t2 ahead (pass 5). The launch's job P (t2) is held by another
    # transaction, so it cannot be claimed: the claim of one should go as if P were not there, to
    # t1, whose turn it is. Pass 2 still puts P's tenant first (and pass 1 moved the queue's clock to
    # P's start, 5), so t2's next job is claimed instead.
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        a1 = insert(setup, "t1")
        p = insert(setup, "t2")
        insert(setup, "t2")
        setup.execute(
            "INSERT INTO queue_tenants (queue, tenant_id, pass, active)"
            " VALUES ('race', 't1', 0, true), ('race', 't2', 5, true)"
        )
        setup.execute("UPDATE queues SET tenants_scanned_at = now() + interval '1 hour' WHERE name = 'race'")
    with held_elsewhere(database_url, [p]) as claimer:
        got = claim(claimer, 1, prefer=p)
        passes: dict[str, float] = dict(
            claimer.execute("SELECT tenant_id, pass FROM queue_tenants WHERE queue = 'race'").fetchall()
        )
    assert got == [a1], (got, passes)


@pytest.mark.parametrize(
    "rules",
    [
        "fair = true, tenant_limit = 1",
        "fair = false, tenant_limit = 1",
        "fair = true, rate_limit = 1, rate_period_seconds = 60, rate_key = 'tenant'",
        "fair = true, rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'",
    ],
    ids=["fair-cap1", "fifo-cap1", "fair-rate1-tenant", "fair-rate1-host"],
)
def test_caps_and_rate_limits_hold_across_the_passes(database_url: str, rules: str) -> None:
    # (held in this review: each pass counts what the last one claimed)
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        held = insert(setup, "t1", priority=0, url="https://h1.example/a")
        for tenant, host in [("t1", "h2"), ("t1", "h3"), ("t2", "h1"), ("t2", "h2"), ("t3", "h1"), ("t3", "h9")]:
            insert(setup, tenant, priority=1, url=f"https://{host}.example/x")
    with held_elsewhere(database_url, [held]) as claimer:
        got = claim(claimer, 5)
        rows = claimer.execute(
            "SELECT tenant_id, job_rate_key(q.rate_key, tenant_id, args) FROM jobs j, queues q"
            " WHERE q.name = 'race' AND j.id = ANY (%s)",
            (got,),
        ).fetchall()
    tenants = [r[0] for r in rows]
    keys = [r[1] for r in rows]
    assert held not in got
    if "tenant_limit" in rules or "'tenant'" in rules:
        assert sorted(tenants) == ["t1", "t2", "t3"], rows
    else:
        assert len(keys) == len(set(keys)) and len(keys) >= 3, rows
