"""A claim of one finds another tenant's job while a tenant in turn has a large batch held
elsewhere (a batch cancel in flight). (It steps over the held rows one by one, as every SKIP
LOCKED pick does: about 100 pages per 5,000 held rows, for as long as the cancel holds them.)
From the third review of 0017."""

from __future__ import annotations

import psycopg
import pytest

HELD = 5000


@pytest.mark.parametrize("rules", ["fair = true", "fair = true, tenant_limit = 1000"], ids=["fair", "fair-capped"])
def test_a_claim_of_one_passes_over_a_held_batch(database_url: str, rules: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute("INSERT INTO queues (name, \"limit\") VALUES ('q', 1000)")
        setup.execute(f"UPDATE queues SET {rules} WHERE name = 'q'")
        setup.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args, batch_id) SELECT 'q', 'echo', 'a', '{}', 'b1'"
            " FROM generate_series(1, %s)",
            (HELD,),
        )
        setup.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args)"
            " SELECT 'q', 'echo', 'b', '{}' FROM generate_series(1, 10)"
        )
        setup.execute("VACUUM ANALYZE jobs")
    with psycopg.connect(database_url) as holder, psycopg.connect(database_url) as claimer:
        holder.execute("SELECT 1 FROM jobs WHERE batch_id = 'b1' FOR UPDATE").fetchall()
        got = claimer.execute("SELECT id FROM claim_jobs('q', 'm', 1, NULL)").fetchall()
        claimer.rollback()
        holder.rollback()
    assert len(got) == 1
