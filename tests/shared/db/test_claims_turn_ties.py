"""From 0019's second review: the tie order `turn > v_free` must hold in the window's own order
(`keyed`), not only in the pick: at the same turn, a tenant in turn takes a window's last start
before a tenant read past the claim's size, whatever their jobs' priorities."""

from __future__ import annotations

import psycopg

from tests.shared.db.test_claims_under_locks import claim, insert, queue_with


def test_a_tenant_in_turn_takes_the_windows_last_start_before_one_read_past_the_claim(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "fair = true, rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'")
        in_turn = insert(conn, "a", url="https://h.example/x", priority=1)
        past = insert(conn, "b", url="https://h.example/y", priority=0)
        # level tenants: a is in turn for a claim of one, b is read past it (turn 2 > v_free 1)
        got = claim(conn, 1)
        # the fair path (no windows) claims a's job: the same here, where h's window is empty
        assert got == [in_turn], (got, in_turn, past)
