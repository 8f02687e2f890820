"""From 0019's second review: random queues on the general path (per-host or per-tenant rate key,
fairness, caps per queue and per tenant, weights, priorities, future jobs), claims with the launch
job and rows held elsewhere, checked inside the claiming transaction (claims under a hold are
sometimes committed, so later claims run over what they did): no window, cap or queue limit is
exceeded, nothing is claimed twice, held or before it is due, and the launch job is claimed
whenever it is due, not held, and its cap and window allow it."""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.shared.db.test_claims_under_locks import claim, insert, queue_with

SEEDS = int(os.environ.get("REVIEW2_SEEDS", "6"))


def scalar(conn: psycopg.Connection, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def check(
    conn: psycopg.Connection, *, limit: int, qlimit: int, cap: int | None, caps: dict[str, int], per_host: bool
) -> None:
    rows = conn.execute(
        "SELECT tenant_id, attempted_at >= scheduled_at, queue FROM jobs WHERE state = 'executing'"
    ).fetchall()
    assert all(r[1] and r[2] == "race" for r in rows), rows
    assert len(rows) <= qlimit
    running = Counter(r[0] for r in rows)
    for t, n in running.items():
        c = caps.get(t, cap)
        if c is not None:
            assert n <= c, (t, n, c)
    col = "args->>'url'" if per_host else "tenant_id"
    started = conn.execute(f"SELECT {col} FROM jobs WHERE attempt > 0").fetchall()
    assert max(Counter(r[0] for r in started).values(), default=0) <= limit, started


def prefer_allowed(
    conn: psycopg.Connection,
    prefer: int,
    *,
    limit: int,
    cap: int | None,
    caps: dict[str, int],
    per_host: bool,
    held: list[int],
) -> bool:
    row = conn.execute(
        "SELECT tenant_id, args->>'url', state = 'available' AND scheduled_at <= now() FROM jobs WHERE id = %s",
        (prefer,),
    ).fetchone()
    assert row is not None
    tenant, url, due = str(row[0]), row[1], row[2]
    if not due or prefer in held:
        return False
    c = caps.get(tenant, cap)
    if c is not None:
        n = scalar(conn, "SELECT count(*) FROM jobs WHERE state='executing' AND tenant_id=%s", (tenant,))
        if n >= c:
            return False
    if per_host:
        n = scalar(conn, "SELECT count(*) FROM jobs WHERE attempt > 0 AND args->>'url' = %s", (url,))
    else:
        n = scalar(conn, "SELECT count(*) FROM jobs WHERE attempt > 0 AND tenant_id = %s", (tenant,))
    return n < limit


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_claims_with_the_launch_job_and_held_rows(database_url: str, seed: int) -> None:
    rnd = random.Random(1000 + seed)
    limit = rnd.choice([1, 2, 3, 5])
    per_host = rnd.random() < 0.75
    cap = rnd.choice([None, None, 1, 2, 3])
    qlimit = rnd.choice([3, 6, 100])
    key = "host:url" if per_host else "tenant"
    rules = f"fair = true, rate_limit = {limit}, rate_period_seconds = 60, rate_key = '{key}'"
    if cap:
        rules += f", tenant_limit = {cap}"
    hosts = [f"https://h{i}.example/x" for i in range(rnd.choice([1, 2, 3, 6]))]
    ntenants = rnd.choice([2, 4, 12, 30])
    caps: dict[str, int] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, rules, limit=qlimit)
        ids = []
        for _ in range(rnd.randint(10, 90)):
            t = f"t{rnd.randrange(ntenants)}"
            ids.append(
                insert(
                    conn,
                    t,
                    url=rnd.choice(hosts),
                    priority=rnd.choice([0, 0, 1, 2]),
                    delay=rnd.choice([0, 0, 0, 0, 3600]),
                )
            )
        for n in range(ntenants):
            if rnd.random() < 0.4:
                mr = rnd.choice([None, 1, 2, 5])
                pass_ = rnd.choice([0, 0, 1, 3, 50])
                conn.execute(
                    "INSERT INTO queue_tenants (queue, tenant_id, pass, active, weight, max_running)"
                    " VALUES ('race', %s, %s, true, %s, %s)"
                    " ON CONFLICT (queue, tenant_id) DO UPDATE SET weight = EXCLUDED.weight,"
                    " pass = EXCLUDED.pass, max_running = EXCLUDED.max_running",
                    (f"t{n}", pass_, rnd.choice([1, 2, 3]), mr),
                )
                if mr is not None:
                    caps[f"t{n}"] = mr
        seen: set[int] = set()
        kw: dict[str, Any] = dict(limit=limit, cap=cap, caps=caps, per_host=per_host)
        for step in range(10):
            n = rnd.choice([1, 1, 2, 3, 5, 10])
            avail = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state='available' ORDER BY id")]
            prefer = rnd.choice([None, rnd.choice(ids), rnd.choice(avail) if avail else None])
            held = rnd.sample(avail, min(len(avail), rnd.randint(1, 6))) if avail and rnd.random() < 0.5 else []
            with psycopg.connect(database_url) as holder, psycopg.connect(database_url) as claimer:
                if held:
                    holder.execute("SELECT 1 FROM jobs WHERE id = ANY (%s) FOR UPDATE", (held,))
                allowed = prefer is not None and prefer_allowed(claimer, prefer, held=held, **kw)
                free = scalar(
                    claimer,
                    "SELECT q.limit - (SELECT count(*) FROM jobs WHERE state='executing')"
                    " FROM queues q WHERE name='race'",
                )
                got = claim(claimer, n, prefer=prefer)
                assert len(got) <= n
                assert len(set(got)) == len(got)
                assert not set(got) & seen, (step, got)
                assert not set(got) & set(held), (step, got, held)
                check(claimer, qlimit=qlimit, **kw)
                if allowed and free > 0:
                    assert prefer in got, (seed, step, prefer, got)
                holder.rollback()
                if rnd.random() < 0.5 or not held:
                    claimer.commit()
                    seen |= set(got)
                else:
                    claimer.rollback()
            check(conn, qlimit=qlimit, **kw)
            if rnd.random() < 0.3 and seen:
                done = rnd.sample(sorted(seen), len(seen) // 2)
                conn.execute(
                    "UPDATE jobs SET state = 'completed', completed_at = now()"
                    " WHERE state = 'executing' AND id = ANY (%s)",
                    (done,),
                )
