"""A tenant whose due jobs are all held elsewhere (a batch cancel in flight,
DELETE /jobs?batchId=...) gives its turn to the next tenant, on every claim path (0017; from the
third review of it: three held jobs and three held tenants emptied a claim of one)."""

from __future__ import annotations

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import RULES, claim_while_held, insert, queue_with

NOT_FIFO = {k: r for k, r in RULES.items() if k != "fifo"}


@pytest.mark.parametrize("rules", NOT_FIFO.values(), ids=NOT_FIFO.keys())
def test_a_claim_of_one_passes_over_a_tenant_with_three_held_jobs(database_url: str, rules: str) -> None:
    # t1 has three due jobs, all locked by one cancel in flight (one transaction); t2 has one due job.
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        held = [insert(setup, "t1", priority=0) for _ in range(3)]
        other = insert(setup, "t2", priority=5)
    got = claim_while_held(database_url, held, 1)
    assert got == [other]


@pytest.mark.parametrize("n_held", [3, 4])
@pytest.mark.parametrize("rules", NOT_FIFO.values(), ids=NOT_FIFO.keys())
def test_a_claim_of_one_passes_over_several_held_tenants(database_url: str, rules: str, n_held: int) -> None:
    # n_held tenants in turn, each with one job held by an admin cancel in flight; the next has a due job.
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        held = [insert(setup, f"t{i}") for i in range(n_held)]
        other = insert(setup, "zz")
    got = claim_while_held(database_url, held, 1)
    assert got == [other]
