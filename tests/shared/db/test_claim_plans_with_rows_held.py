"""The statements a claim runs (0017: the passes after rows held elsewhere, the lock and claim by
address), planned when the table's statistics say empty but a
deployment's first few jobs are there (the first claims of a fresh database), then run over a
backlog of 20,000 jobs (as test_claim_plans_by_rule.py checks the other plans): no statement reads
the backlog. From an adversarial review of 0017's first version, where the general path's lock and
the fair path's lock (both since 0015 or before) read 598 and 781 pages per claim."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from .plan_reading import explain_nested, pages_by_statement

BATCH = 10
RULES = {
    "fifo-capped": (False, None, 1000),
    "fair-capped": (True, None, 1000),
    "fair-host": (True, "host:url", None),
    "fair-ratetenant": (True, "tenant", None),
}


def run(database_url: str, rules: tuple[Any, ...], *, hold: bool) -> tuple[int, list[tuple[int, str]]]:
    fair, rate, cap = rules
    queue = "q"
    with (
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as other,
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as claimer,
        psycopg.connect(database_url, row_factory=dict_row) as holder,
    ):
        other.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")
        other.execute(
            'INSERT INTO queues (name, "limit", fair, tenant_limit, rate_limit, rate_period_seconds, rate_key)'
            " VALUES (%s, 1000, %s, %s, %s, %s, %s)",
            (queue, fair, cap, 1000 if rate else None, 60 if rate else None, rate),
        )

        def claim() -> int:
            rows = claimer.execute("SELECT id FROM claim_jobs(%s, 'm1', %s, NULL)", (queue, BATCH), prepare=True)
            return len(rows.fetchall())

        def hold_heads() -> None:
            if hold:  # each tenant's first 3 jobs, locked elsewhere: the claim picks again
                holder.execute(
                    "SELECT id FROM jobs WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER"
                    " (PARTITION BY tenant_id ORDER BY priority, scheduled_at, id) rn FROM jobs"
                    "  WHERE queue = %s AND state = 'available') x WHERE rn <= 3) FOR UPDATE",
                    (queue,),
                ).fetchall()

        other.execute("VACUUM ANALYZE jobs")  # a fresh database: statistics of an empty table
        other.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args) SELECT %s, 'echo', 't' || (i %% 2),"
            " jsonb_build_object('url', 'https://h1.example/x') FROM generate_series(1, 12) i",
            (queue,),
        )
        hold_heads()
        claimer.autocommit = False
        assert claim() > 0  # the first claim: every statement it runs is planned now
        claimer.rollback()
        holder.rollback()
        claimer.autocommit = True
        other.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts)"
            " SELECT %s, 'echo', 't' || (i %% 2), jsonb_build_object('url', 'https://h' || (i %% 50) || '.example/x'),"
            " '{}', 5 FROM generate_series(1, 20000) i",
            (queue,),
        )
        hold_heads()
        notes = explain_nested(claimer)
        claimed = claim()
        claimer.rollback()
        holder.rollback()
    return claimed, pages_by_statement(notes)


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_the_new_pick_again_statement_does_not_read_the_backlog(database_url: str, rules: tuple[Any, ...]) -> None:
    claimed, pages = run(database_url, rules, hold=True)
    skipped = [p for p in pages if p[1].startswith("v_skipped :=")]
    assert skipped, pages[:3]  # a second pass ran
    assert claimed == BATCH
    assert max(p for p, _ in skipped) <= 50, skipped


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_the_general_paths_lock_statement_does_not_read_the_backlog(database_url: str, rules: tuple[Any, ...]) -> None:
    # (the statement is 0015's, unchanged by 0017: no row held, one pass)
    claimed, pages = run(database_url, rules, hold=False)
    assert claimed == BATCH
    assert pages[0][0] <= 50, pages[:3]


def test_the_fair_paths_statements_do_not_read_the_backlog(database_url: str) -> None:
    claimed, pages = run(database_url, (True, None, None), hold=False)
    assert claimed == BATCH
    assert pages[0][0] <= 50, pages[:3]
