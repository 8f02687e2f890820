"""A claim passing over a tenant whose jobs are held elsewhere (0017) serves the others as if that
tenant had no due job: weights and turns unchanged. From the third review of 0017."""

from __future__ import annotations

import collections

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import insert, queue_with

RULES = {
    "fair": "fair = true",
    "fair-capped": "fair = true, tenant_limit = 1000",
    "fair-rate": "fair = true, rate_limit = 1000, rate_period_seconds = 60, rate_key = 'tenant'",
}
WEIGHTS = {"b": 3, "c": 1, "d": 2}


def served(database_url: str, rules: str, with_held: bool, size: int, rounds: int) -> list[collections.Counter[str]]:
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute("DELETE FROM jobs")
        c.execute("DELETE FROM queue_tenants")
        c.execute("DELETE FROM rate_windows")
        c.execute("DELETE FROM queues")
        queue_with(c, rules)
        held = [insert(c, "a") for _ in range(2)] if with_held else []
        for t in WEIGHTS:
            for _ in range(10):
                insert(c, t)
        c.execute("SELECT claim_list_tenants('race', 0, clock_timestamp())")
        for t, w in WEIGHTS.items():
            c.execute("UPDATE queue_tenants SET weight = %s WHERE tenant_id = %s", (w, t))
    out = []
    with psycopg.connect(database_url) as holder, psycopg.connect(database_url, autocommit=True) as claimer:
        if held:
            holder.execute("SELECT 1 FROM jobs WHERE id = ANY(%s) FOR UPDATE", (held,))
        for _ in range(rounds):
            rows = claimer.execute("SELECT tenant_id FROM claim_jobs('race', 'm', %s, NULL)", (size,)).fetchall()
            out.append(collections.Counter(r[0] for r in rows))
        holder.rollback()
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_held_tenant_changes_nobody_elses_share(database_url: str, rules: str, size: int) -> None:
    baseline = served(database_url, rules, False, size, 4)
    with_held = served(database_url, rules, True, size, 4)
    assert sum(with_held, collections.Counter()) == sum(baseline, collections.Counter()), (baseline, with_held)
