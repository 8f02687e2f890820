"""From 0019's second review: change (2), the pass bound on the fair general path without a key from
the job (caps, a limit per tenant), is a bound on reading only, and no test noticed it dropped
(`CASE WHEN v_lookahead > 0 AND count(*) OVER () >= v_free`: the four changed files,
test_claim_plans_by_rule.py and test_engine_plans.py all pass). A claim of 100 over 300 level
tenants under a cap reads each tenant in turn for one job, not v_free - turn + 1 of them."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from .plan_reading import explain_nested, pages_by_statement

RULES = {
    "capped": "tenant_limit = 1000",
    "per-tenant": "rate_limit = 1000, rate_period_seconds = 60, rate_key = 'tenant'",
}


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_a_capped_claim_over_level_tenants_reads_each_for_one_job(database_url: str, rules: str) -> None:
    size = 100
    with (
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as other,
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as claimer,
    ):
        other.execute("INSERT INTO queues (name, \"limit\", fair) VALUES ('q', 1000, true)")
        other.execute(f"UPDATE queues SET {rules} WHERE name = 'q'")
        other.execute("VACUUM ANALYZE jobs")
        other.execute("INSERT INTO jobs (queue, worker, tenant_id, args) VALUES ('q', 'echo', 'a', '{}')")
        assert len(claimer.execute("SELECT id FROM claim_jobs('q', 'm1', 1, NULL)", prepare=True).fetchall()) == 1
        other.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args)"
            " SELECT 'q', 'echo', 'b' || lpad((i % 300)::text, 6, '0'), '{}' FROM generate_series(1, 30000) i"
        )
        other.execute("SELECT claim_list_tenants('q', 0, clock_timestamp())")
        other.execute("UPDATE queues SET tenants_scanned_at = NULL")
        notes = explain_nested(claimer)
        got = claimer.execute("SELECT id FROM claim_jobs('q', 'm1', %s, NULL)", (size,), prepare=True).fetchall()
        claimer.rollback()
    assert len(got) == size
    picks = [pages for pages, text in pages_by_statement(notes) if text.startswith("WITH running")]
    # 100 tenants in turn, a job each (a heap page, interleaved) plus 10 pages of index each
    assert max(picks) <= size * (1 + 10), picks
