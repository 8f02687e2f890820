"""Random small queues on the general path with a per-host rate key (fairness, caps, weights,
priority, future jobs, the launch job, rows held elsewhere, completions): after each claim, no
window, cap or queue limit is exceeded and nothing is claimed twice or before it is due. From the
second review of 0018."""

from __future__ import annotations

import random
from collections import Counter

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import claim, claim_while_held, insert, queue_with


@pytest.mark.parametrize("seed", range(24))
def test_random_general_path_claims_keep_the_invariants(database_url: str, seed: int) -> None:
    rnd = random.Random(seed)
    limit = rnd.choice([1, 2, 3])
    cap = rnd.choice([None, 1, 2])
    qlimit = rnd.choice([4, 8, 100])
    rules = f"fair = true, rate_limit = {limit}, rate_period_seconds = 60, rate_key = 'host:url'"
    if cap:
        rules += f", tenant_limit = {cap}"
    hosts = [f"https://h{i}.example/x" for i in range(rnd.choice([2, 4, 8]))]
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules, limit=qlimit)
        ids = []
        for _ in range(rnd.randint(10, 60)):
            t = f"t{rnd.randint(0, 9)}"
            ids.append(
                insert(
                    conn, t, url=rnd.choice(hosts), priority=rnd.choice([0, 0, 1]), delay=rnd.choice([0, 0, 0, 3600])
                )
            )
        for n in range(10):
            if rnd.random() < 0.3:
                conn.execute(
                    "INSERT INTO queue_tenants (queue, tenant_id, pass, active, weight)"
                    " VALUES ('race', %s, 0, true, %s)"
                    " ON CONFLICT (queue, tenant_id) DO UPDATE SET weight = EXCLUDED.weight",
                    (f"t{n}", rnd.choice([2, 3])),
                )
        seen: list[int] = []
        for step in range(8):
            n = rnd.choice([1, 2, 3, 5, 10])
            prefer = rnd.choice([None, None, rnd.choice(ids)])
            if rnd.random() < 0.3:
                avail = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE queue='race' AND state='available'")]
                held = rnd.sample(avail, min(len(avail), rnd.randint(1, 3))) if avail else []
                got = claim_while_held(database_url, held, n, prefer=prefer)
                # claim_while_held rolls back: redo for real without the hold
                got2 = claim(conn, n, prefer=prefer)
                assert not set(got) & set(held)
                got = got2
            else:
                got = claim(conn, n, prefer=prefer)
            assert len(got) <= n
            assert not set(got) & set(seen), (step, got)
            seen += got
            rows = conn.execute(
                "SELECT args->>'url', tenant_id, scheduled_at <= now(), queue FROM jobs WHERE state = 'executing'"
            ).fetchall()
            assert all(r[2] and r[3] == "race" for r in rows)
            assert len(rows) <= qlimit
            started = conn.execute("SELECT args->>'url' FROM jobs WHERE attempt > 0").fetchall()
            assert max(Counter(r[0] for r in started).values(), default=0) <= limit, (step, started)
            if cap:
                assert max(Counter(r[1] for r in rows).values(), default=0) <= cap
            if rnd.random() < 0.3:
                conn.execute(
                    "UPDATE jobs SET state = 'completed', completed_at = now()"
                    " WHERE state = 'executing' AND id = ANY (%s)",
                    (rnd.sample(got, len(got) // 2),),
                )
