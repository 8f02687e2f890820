"""The pages a claim reads while many tenants in turn wait for a full rate window (0018; from its
review: its first version read every such tenant's next 21 jobs on every claim, 48,010 pages for
2,000 tenants of 25 jobs each, against 464 for 0017, whose claims came back empty instead).

A claim passes over at most 32 such tenants beyond twice its size, so what it reads stays bounded
by the tenants it may reach, not by how many are held back. Plans are made on a near-empty table,
as a machine's connection makes them at its start."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from .plan_reading import explain_nested, pages_by_statement

FULL = "https://full.example/x"
# 2 x 10 + 32 tenants reached, each read for up to (its share + 20) jobs, one heap page each (the
# tenants' jobs are interleaved), plus the index: under 2,000 pages (1,410 measured). Unbounded it
# was 48,010.
PICK_PAGES = 2000


def claim_reading(
    database_url: str,
    jobs_sql: str,
    size: int = 10,
    *,
    listed: bool = True,
    launch_sql: str | None = None,
    after_listing: str | None = None,
) -> tuple[int, list[int]]:
    """Jobs claimed by one claim of `size` over the jobs `jobs_sql` inserts, and the pages each of
    its pick statements read. `listed`: another machine's claim listed the tenants a moment ago, so
    this one picks, lists them again when short, and picks again; else it lists them first.
    `launch_sql`: inserts the job a machine was launched for (RETURNING id), claimed first;
    `after_listing`: runs once the tenants are listed (to set their turns)."""
    with (
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as other,
        psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as claimer,
    ):
        other.execute(
            'INSERT INTO queues (name, "limit", fair, rate_limit, rate_period_seconds, rate_key)'
            " VALUES ('q', 1000, true, 1, 60, 'host:url')"
        )
        other.execute("VACUUM ANALYZE jobs")

        def claim(prefer: int | None = None) -> int:
            rows = claimer.execute("SELECT id FROM claim_jobs('q', 'm1', %s, %s)", (size, prefer), prepare=True)
            return len(rows.fetchall())

        other.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args) SELECT 'q', 'echo', 'a' || i,"
            " jsonb_build_object('url', %s::text) FROM generate_series(1, 3) i",
            (FULL,),
        )
        assert claim() == 1
        assert claim() == 0
        other.execute(jobs_sql)
        launch = other.execute(launch_sql).fetchone() if launch_sql else None
        other.execute("SELECT claim_list_tenants('q', 0, clock_timestamp())")
        if after_listing:
            other.execute(after_listing)
        other.execute(
            "UPDATE queues SET tenants_scanned_at = CASE WHEN %s THEN now() + interval '1 hour' END", (listed,)
        )
        notes = explain_nested(claimer)
        claimed = claim(launch["id"] if launch else None)
        claimer.rollback()
    return claimed, [pages for pages, text in pages_by_statement(notes) if text.startswith("WITH running")]


# 2,000 tenants of 25 jobs, interleaved, all for FULL, whose window the setup fills.
HELD_BACK = (
    "INSERT INTO jobs (queue, worker, tenant_id, args)"
    " SELECT 'q', 'echo', 'b' || lpad((i % 2000)::text, 6, '0'), jsonb_build_object('url', 'https://full.example/x')"
    " FROM generate_series(1, 50000) i"
)


def test_a_claim_reads_a_bounded_number_of_tenants_held_back_by_a_full_window(database_url: str) -> None:
    claimed, picks = claim_reading(database_url, HELD_BACK, listed=False)
    assert claimed == 0
    assert picks and max(picks) <= PICK_PAGES, picks


def test_a_claim_that_lists_the_tenants_again_reads_them_twice_at_most(database_url: str) -> None:
    claimed, picks = claim_reading(database_url, HELD_BACK)
    assert claimed == 0
    assert len(picks) <= 2 and sum(picks) <= 2 * PICK_PAGES, picks


def test_a_claim_over_free_tenants_reads_only_those_next_in_turn(database_url: str) -> None:
    # each tenant's jobs are for a host of its own: nothing is held back, and the check that
    # passes tenants over stops at 2 x 10 tenants (601 pages measured)
    claimed, picks = claim_reading(
        database_url, HELD_BACK.replace("'https://full.example/x'", "'https://h' || (i % 2000) || '.example/x'")
    )
    assert claimed == 10
    assert picks and max(picks) <= 1000, picks


def test_a_short_claim_over_tenants_with_hosts_of_their_own_does_not_pass_again(database_url: str) -> None:
    # 5 tenants of 2,000 jobs, each for a host of its own (room 1): a claim of 10 gets 5. Nothing
    # lost a window to another tenant; 0018 passed again for a tenant's own jobs (a second review).
    claimed, picks = claim_reading(
        database_url,
        "INSERT INTO jobs (queue, worker, tenant_id, args) SELECT 'q', 'echo', 't' || (i % 5),"
        " jsonb_build_object('url', 'https://h' || (i % 5) || '.example/x') FROM generate_series(0, 9999) i",
        10,
    )
    assert claimed == 5
    assert len(picks) <= 2, picks  # the pick, and the one after listing again (as 0017)


def test_a_claim_whose_passes_keep_losing_windows_stops_passing_again(database_url: str) -> None:
    # 8 groups of 20 tenants, a host per group (room 1), 25 jobs per tenant: every pass's 20
    # tenants in turn want one host. 0017 claimed 1 job; 0018 passed again until 16 passes or the
    # tenants ran out (5 picks, 3,600 pages for 3 jobs, a second review); now twice at most.
    claimed, picks = claim_reading(
        database_url,
        "INSERT INTO jobs (queue, worker, tenant_id, args)"
        " SELECT 'q', 'echo', 'g' || (i % 160 / 20) || '-' || lpad((i % 160)::text, 4, '0'),"
        " jsonb_build_object('url', 'https://h' || (i % 160 / 20) || '.example/x') FROM generate_series(0, 3999) i",
        10,
    )
    assert claimed == 3
    assert len(picks) <= 4 and max(picks) <= PICK_PAGES, picks  # (the first pass picks, lists, picks again)
