"""Caps and rate limits hold across the passes that pass over held rows and tenants (0017; from the
third review of it): no job twice, no held job claimed."""

from __future__ import annotations

import collections
import random

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import insert, queue_with

RULES = {
    "fair-cap2": "fair = true, tenant_limit = 2",
    "fifo-cap2": "fair = false, tenant_limit = 2",
    "fair-rate2": "fair = true, rate_limit = 2, rate_period_seconds = 600, rate_key = 'tenant'",
    "fifo-rate2": "fair = false, rate_limit = 2, rate_period_seconds = 600, rate_key = 'tenant'",
}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_caps_hold_with_held_rows(database_url: str, rules: str, seed: int) -> None:
    rnd = random.Random(seed)
    with psycopg.connect(database_url, autocommit=True) as c:
        queue_with(c, rules)
        ids = [insert(c, f"t{rnd.randrange(5)}", priority=rnd.randrange(3)) for _ in range(40)]
    held = rnd.sample(ids, 15)
    seen: list[int] = []
    with psycopg.connect(database_url) as holder, psycopg.connect(database_url, autocommit=True) as claimer:
        holder.execute("SELECT 1 FROM jobs WHERE id = ANY(%s) FOR UPDATE", (held,))
        for _ in range(6):
            seen += [
                r[0]
                for r in claimer.execute("SELECT id FROM claim_jobs('race', 'm', %s, NULL)", (rnd.randrange(1, 6),))
            ]
        holder.rollback()
        per = collections.Counter(
            r[0] for r in claimer.execute("SELECT tenant_id FROM jobs WHERE state = 'executing'").fetchall()
        )
    assert len(seen) == len(set(seen))
    assert not set(seen) & set(held)
    assert max(per.values(), default=0) <= 2, per
