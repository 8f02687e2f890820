"""The pass bound (how many jobs a tenant can take in a claim, from its pass and the passes of the
tenants in turn with it) with huge or tiny pass gaps, weights of 100 and passes of 1e15: no
integer overflow in its cast, no NULL, claims filled. The fair path without caps or rate limits
raised `integer out of range` for gaps of 3e7 and weight 100 (since 0007; clamped in 0019, as
the general path's bound is; from 0019's review)."""

from __future__ import annotations

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import claim, insert, queue_with

RULES = {
    "fair": "fair = true",
    "capped": "fair = true, tenant_limit = 1000",
    "keyed": "fair = true, rate_key = 'host:url', rate_limit = 1000, rate_period_seconds = 60",
}


@pytest.mark.parametrize("base", [0.0, 1e15])
@pytest.mark.parametrize("gap", [1e-9, 0.125, 3e7, 1e12])
@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_huge_or_tiny_pass_gaps_fill_the_claim(database_url: str, rules: str, gap: float, base: float) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules)
        for t, n in (("a", 30), ("b", 30), ("c", 30)):
            for i in range(n):
                insert(conn, t, url=f"https://{t}{i % 5}.example/x")
        conn.execute(
            "INSERT INTO queue_tenants (queue, tenant_id, pass, weight, active) VALUES"
            " ('race', 'a', %s, 100, true), ('race', 'b', %s, 100, true), ('race', 'c', %s, 1, true)",
            (base, base + gap, base + 2 * gap),
        )
        conn.execute(
            "UPDATE queues SET fair_vtime = %s, tenants_scanned_at = now() + interval '1 hour' WHERE name = 'race'",
            (base,),
        )
        got = claim(conn, 3)
        assert len(got) == 3
        got = claim(conn, 40)
        assert len(got) == 40
