"""From 0019's second review: the pass bound of a share is the greatest pass among the first v_free
tenants (`FILTER (WHERE place <= v_free)` / `turn <= v_free`), not among all the tenants listed
(twice the claim + 32) or kept (twice the claim). No test of the 0019 diff noticed either filter
dropped: their tenants are level or a job apart, where the bound over all of them equals the
place bound. Here 150 tenants
are level and 150 are 50 jobs ahead: each of the first is read for one job + 20, as when all are
level (test_claim_plans_by_claim_size.py)."""

from __future__ import annotations

import pytest

from .test_claim_plans_by_claim_size import FREE_HOSTS, HELD_BACK, bound
from .test_claim_plans_with_rate_blocked_tenants import claim_reading

UNEVEN = (
    "INSERT INTO queue_tenants (queue, tenant_id, pass)"
    " SELECT 'q', 'b' || lpad(i::text, 6, '0'), CASE WHEN i < 150 THEN 0 ELSE 50 END"
    " FROM generate_series(0, 299) i;"
)


@pytest.mark.parametrize("jobs", [HELD_BACK, FREE_HOSTS], ids=["held-back", "free"])
def test_a_claim_over_level_tenants_with_others_ahead_reads_each_for_one_job(database_url: str, jobs: str) -> None:
    # (the check's share: held-back; the pick's fetch: free, where 200 tenants are kept)
    size = 100
    claimed, picks = claim_reading(database_url, UNEVEN + jobs, size, listed=False)
    assert claimed == (0 if jobs == HELD_BACK else size)
    assert max(picks) <= bound(2 * size + 32), picks
