"""From 0019's second review: the pick reads a tenant kept in turn for its share at its turn among the
tenants kept, not at its place among all listed: a tenant behind many held-back tenants, alone in
turn, can take the whole claim (README: "more when fewer tenants are in turn"). No test of the
0019 diff failed with `v_free - o.place + 1` in `chosen`'s fetch."""

from __future__ import annotations

import psycopg

from tests.shared.db.test_claims_under_locks import claim, insert, queue_with

FULL = "https://full.example/x"


def test_a_tenant_alone_in_turn_behind_held_back_tenants_fills_the_claim(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "fair = true, rate_limit = 1, rate_period_seconds = 600, rate_key = 'host:url'")
        insert(conn, "a0", url=FULL)
        assert len(claim(conn, 1)) == 1  # FULL's window is full
        for h in range(49):
            insert(conn, f"h{h:02d}", url=FULL)
        conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args) SELECT 'race', 'echo', 'z',"
            " jsonb_build_object('url', 'https://z' || i || '.example/x') FROM generate_series(1, 40) i"
        )
        conn.execute("UPDATE queues SET tenants_scanned_at = NULL WHERE name = 'race'")
        got = claim(conn, 30)
        assert len(got) == 30, len(got)
