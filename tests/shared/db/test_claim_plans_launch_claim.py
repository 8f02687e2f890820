"""The launch's claim (p_prefer_id) puts the launch job's tenant at place 1 whatever its pass. The
pass bound of the others' shares took the greatest pass among the first v_free places, which then
was that tenant's: with it ahead in turn, every other tenant's bound was the whole claim again,
and the launch's claim read about as 0018 did (9,286 pages for a claim of 100 over 300 held-back
tenants, the launch tenant 50 jobs ahead; 5,593 without a launch job). The bound now leaves the
launch's tenant out (found by 0019's second review)"""

from __future__ import annotations

from .test_claim_plans_by_claim_size import HELD_BACK, TENANTS, bound
from .test_claim_plans_with_rate_blocked_tenants import claim_reading

# the launch job: a job of its own host, of a tenant ahead in turn (it took 50 jobs before)
LAUNCH = (
    "INSERT INTO jobs (queue, worker, tenant_id, args) VALUES ('q', 'echo', 'b000000',"
    " jsonb_build_object('url', 'https://launch.example/x')) RETURNING id"
)
AHEAD = "UPDATE queue_tenants SET pass = 50 WHERE queue = 'q' AND tenant_id = 'b000000'"


def test_the_launch_claim_of_a_tenant_ahead_in_turn_reads_each_other_tenant_for_its_share(database_url: str) -> None:
    size = 100
    claimed, picks = claim_reading(database_url, HELD_BACK, size, listed=False, launch_sql=LAUNCH, after_listing=AHEAD)
    assert claimed >= 1
    assert max(picks) <= bound(min(TENANTS, 2 * size + 32)) + 200, picks
