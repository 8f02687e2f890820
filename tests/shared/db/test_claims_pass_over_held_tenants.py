"""A claim whose tenant in turn has every due job held elsewhere (a cancel in flight) gives the turn
to the next tenant, for that claim (0017; from the second adversarial review of it)."""

from __future__ import annotations

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import RULES, claim_while_held, insert, queue_with


@pytest.mark.parametrize("rules", [r for k, r in RULES.items() if k != "fifo"], ids=[k for k in RULES if k != "fifo"])
def test_a_claim_of_one_passes_over_a_tenant_whose_only_job_is_held(database_url: str, rules: str) -> None:
    # t1 is first in turn (same pass, lower id) and has one job, locked by a cancel in flight;
    # t2 has a due job. A claim of one must take t2's job, as the general path does.
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        held = insert(setup, "t1")
        other = insert(setup, "t2")
    got = claim_while_held(database_url, [held], 1)
    assert got == [other]


@pytest.mark.parametrize("rules", [r for k, r in RULES.items() if k != "fifo"], ids=[k for k in RULES if k != "fifo"])
def test_a_claim_of_two_is_not_left_short_by_a_tenant_whose_only_job_is_held(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as setup:
        queue_with(setup, rules)
        held = insert(setup, "t1")
        second = insert(setup, "t2")
        third = insert(setup, "t3")
    got = claim_while_held(database_url, [held], 2)
    assert sorted(got) == [second, third]
