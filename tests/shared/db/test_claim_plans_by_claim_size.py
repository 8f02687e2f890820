"""A claim's reading against its size (migration 0019, from a third review of 0018).

0018's general path with a key derived from the job, fair, read every tenant in turn as far as its
room + 20 jobs (the check that keeps it in turn, and the pick): room is the whole claim when no cap
applies, so the reading grew with the square of the claim's size. 300 tenants of 150 jobs,
interleaved (a page per job), a per-host limit of 1 a minute: pages read by the pick, claims of 10
and 100, held back by a full window 1,668 and 28,422, free 754 and 25,522 (0017: 618 and 10,638
free). 0019 reads each tenant for its share at its place + 20 (no more than its pass leaves room
for, as the fair path without a key does). Figures with 0019: 1,216, 5,593, 572 and
5,668. A claim's jobs are MACHINE_CONCURRENCY (default 1)"""

from __future__ import annotations

import pytest

from .test_claim_plans_with_rate_blocked_tenants import claim_reading

TENANTS = 300
HELD_BACK = (
    "INSERT INTO jobs (queue, worker, tenant_id, args)"
    " SELECT 'q', 'echo', 'b' || lpad((i % 300)::text, 6, '0'), jsonb_build_object('url', 'https://full.example/x')"
    " FROM generate_series(1, 45000) i"
)
FREE_HOSTS = HELD_BACK.replace("'https://full.example/x'", "'https://h' || (i % 300) || '.example/x'")


def bound(tenants: int) -> int:
    """Pages: the tenants here are level (all new), so each one's share is a job: the check and the
    pick read at most its next 21 jobs, a heap page each (interleaved), plus at most 10 pages of
    index descents and window probes per tenant reached. Linear in the claim's size."""
    return tenants * (1 + 20 + 10)


@pytest.mark.parametrize("size", [10, 100])
def test_a_claim_over_held_back_tenants_reads_each_for_its_share(database_url: str, size: int) -> None:
    claimed, picks = claim_reading(database_url, HELD_BACK, size, listed=False)
    assert claimed == 0
    assert max(picks) <= bound(min(TENANTS, 2 * size + 32)), picks


@pytest.mark.parametrize("size", [10, 100])
def test_a_claim_over_free_tenants_reads_each_for_its_share(database_url: str, size: int) -> None:
    claimed, picks = claim_reading(database_url, FREE_HOSTS, size, listed=False)
    assert claimed == size
    assert max(picks) <= bound(2 * size), picks


SPREAD = (
    "INSERT INTO queue_tenants (queue, tenant_id, pass)"
    " SELECT 'q', 'b' || lpad(i::text, 6, '0'), i FROM generate_series(0, 249) i;"
    "INSERT INTO jobs (queue, worker, tenant_id, args)"
    " SELECT 'q', 'echo', 'b' || lpad((i % 250)::text, 6, '0'), jsonb_build_object('url', 'https://full.example/x')"
    " FROM generate_series(1, 50000) i"
)


def share_bound(size: int, tenants: int) -> int:
    """Pages when the tenants' passes are a job apart: the tenant at place p can take
    size - p + 1 jobs, read + 20, a heap page each, plus 10 pages per tenant reached."""
    return sum(max(size - place + 1, 1) + 20 + 10 for place in range(1, tenants + 1))


@pytest.mark.parametrize("size", [10, 100])
def test_a_claim_over_held_back_tenants_a_job_apart_reads_each_for_its_share(database_url: str, size: int) -> None:
    # (from 0019's review: 1,245 and 10,382 pages; 0018 read 1,668 and 28,583)
    claimed, picks = claim_reading(database_url, SPREAD, size, listed=False)
    assert claimed == 0
    assert max(picks) <= share_bound(size, min(250, 2 * size + 32)), picks
