"""The launch's claim (p_prefer_id) puts the launch job's tenant at place 1 whatever its pass. The
pass bound of the others' shares took the greatest pass among the first v_free places, which then
was that tenant's: with it ahead in turn, every other tenant's bound was the whole claim again,
and the launch's claim read about as 0018 did (9,286 pages for a claim of 100 over 300 held-back
tenants, the launch tenant 50 jobs ahead; 5,593 without a launch job). The bound now leaves the
launch's tenant out (found by 0019's second review)"""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from .plan_reading import explain_nested, pages_by_statement
from .test_claim_plans_by_claim_size import HELD_BACK, TENANTS, bound
from .test_claim_plans_with_rate_blocked_tenants import FULL


def reading_with_prefer(
    database_url: str, jobs_sql: str, size: int, prefer_pass: float | None
) -> tuple[int, list[int]]:
    with (
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as other,
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as claimer,
    ):
        other.execute(
            'INSERT INTO queues (name, "limit", fair, rate_limit, rate_period_seconds, rate_key)'
            " VALUES ('q', 1000, true, 1, 60, 'host:url')"
        )
        other.execute("VACUUM ANALYZE jobs")

        def claim(prefer: int | None) -> int:
            rows = claimer.execute("SELECT id FROM claim_jobs('q', 'm1', %s, %s)", (size, prefer), prepare=True)
            return len(rows.fetchall())

        other.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args) SELECT 'q', 'echo', 'a' || i,"
            " jsonb_build_object('url', %s::text) FROM generate_series(1, 3) i",
            (FULL,),
        )
        assert claim(None) == 1
        assert claim(None) == 0
        other.execute(jobs_sql)
        # the launch job: a job of its own host, of a tenant ahead in turn (it took 50 jobs before)
        row = other.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args) VALUES ('q', 'echo', 'b000000',"
            " jsonb_build_object('url', 'https://launch.example/x')) RETURNING id"
        ).fetchone()
        assert row is not None
        other.execute("SELECT claim_list_tenants('q', 0, clock_timestamp())")
        if prefer_pass is not None:
            other.execute(
                "UPDATE queue_tenants SET pass = %s WHERE queue = 'q' AND tenant_id = 'b000000'", (prefer_pass,)
            )
        other.execute("UPDATE queues SET tenants_scanned_at = NULL")
        notes = explain_nested(claimer)
        claimed = claim(row["id"])
        claimer.rollback()
    return claimed, [pages for pages, text in pages_by_statement(notes) if text.startswith("WITH running")]


def test_the_launch_claim_of_a_tenant_ahead_in_turn_reads_each_other_tenant_for_its_share(database_url: str) -> None:
    size = 100
    claimed, picks = reading_with_prefer(database_url, HELD_BACK, size, prefer_pass=50)
    assert claimed >= 1
    assert max(picks) <= bound(min(TENANTS, 2 * size + 32)) + 200, picks
