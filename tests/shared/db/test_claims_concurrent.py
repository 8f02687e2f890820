"""Many claimers at once (threads, a connection each) mixing every claim rule, launch jobs
(prefer_id), completions, hand-backs, failures, a stager and fairness switched on and off: after
every claim, still under the queue's lock, the queue's limit and every tenant's cap hold, no job is
returned twice or while held, and no rate window ever holds more starts than its limit.
CLAIM_STRESS_SECONDS (default 1.5) sets how long each variant runs (longer in a soak)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict
from datetime import datetime

import psycopg
import pytest

LIMIT = 12
TENANT_LIMIT = 4
CAPS = {"t0": 1, "t1": 2}  # own caps; the rest use TENANT_LIMIT when capped
SECONDS = float(os.environ.get("CLAIM_STRESS_SECONDS", "1.5"))


@pytest.mark.parametrize(
    "rules",
    [
        "fair = false",
        "fair = true",
        f"fair = true, tenant_limit = {TENANT_LIMIT}",
        f"fair = false, tenant_limit = {TENANT_LIMIT}",
        "fair = true, rate_limit = 5, rate_period_seconds = 0.3, rate_key = 'tenant'",
        f"fair = false, tenant_limit = {TENANT_LIMIT}, rate_limit = 5, rate_period_seconds = 0.3, rate_key = 'tenant'",
        "fair = true, rate_limit = 3, rate_period_seconds = 0.2, rate_key = 'host:url'",
    ],
    ids=["fifo", "fair", "fair-capped", "fifo-capped", "fair-rate", "fifo-capped-rate", "fair-host"],
)
@pytest.mark.parametrize("toggle", [False, True], ids=["steady", "toggle-fair"])
def test_limits_hold_under_concurrent_claimers(database_url: str, rules: str, toggle: bool) -> None:
    capped = "tenant_limit" in rules
    rate = "rate_limit" in rules
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"INSERT INTO queues (name, \"limit\") VALUES ('race', {LIMIT}), ('other', 100)")
        c.execute(f"UPDATE queues SET {rules} WHERE name = 'race'")
        if capped:
            for tenant, cap in CAPS.items():
                c.execute(
                    "INSERT INTO queue_tenants (queue, tenant_id, max_running, weight) VALUES ('race', %s, %s, 2)",
                    (tenant, cap),
                )
        c.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts, priority, scheduled_at)"
            " SELECT 'race', 'echo', 't' || (g % 6), jsonb_build_object('url', 'https://h' || (g % 4) || '.example/'),"
            "        '{}', 100, g % 3, now() + make_interval(secs => (g % 5) * 0.2)"
            "   FROM generate_series(1, 3000) g"
        )
        c.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts)"
            " SELECT 'other', 'echo', 't1', '{}', '{}', 5 FROM generate_series(1, 50)"
        )
        ids = [r[0] for r in c.execute("SELECT id FROM jobs").fetchall()]

    errors: list[str] = []
    held: dict[int, str] = {}  # job id -> claim token held by some thread
    lock = threading.Lock()
    starts: dict[str, list[datetime]] = defaultdict(list)
    stop = threading.Event()

    def worker(n: int) -> None:
        rnd = random.Random(n)
        mine: list[tuple[int, str]] = []
        with psycopg.connect(database_url) as conn:
            while not stop.is_set() and not errors:
                prefer = rnd.choice(ids) if rnd.random() < 0.3 else None
                max_jobs = rnd.choice([1, 1, 2, 3, 5, 20])
                rows = conn.execute(
                    "SELECT id, tenant_id, attempt, claim_token::text, attempted_at, args->>'url', queue"
                    "  FROM claim_jobs('race', %s, %s, %s)",
                    (f"m{n}", max_jobs, prefer),
                ).fetchall()
                if len(rows) > max(max_jobs, 0):
                    errors.append(f"claim of {max_jobs} returned {len(rows)}")
                if len({r[0] for r in rows}) != len(rows):
                    errors.append(f"one claim returned a job twice: {rows}")
                if any(r[6] != "race" for r in rows):
                    errors.append(f"claimed another queue's job: {rows}")
                # still under the queue's lock: no other claim can interleave
                ex = conn.execute(
                    "SELECT tenant_id, count(*) FROM jobs WHERE queue = 'race' AND state = 'executing' GROUP BY 1"
                ).fetchall()
                total = sum(k for _, k in ex)
                if total > LIMIT:
                    errors.append(f"{total} executing > limit {LIMIT} after a claim of {max_jobs} prefer={prefer}")
                if capped:
                    for t, k in ex:
                        cap = CAPS.get(t, TENANT_LIMIT)
                        if k > cap:
                            errors.append(f"tenant {t}: {k} executing > cap {cap}")
                with lock:
                    for r in rows:
                        if r[0] in held:
                            errors.append(f"job {r[0]} claimed while still held")
                        held[r[0]] = r[3]
                        key = r[1] if "'tenant'" in rules else (r[5] or "")
                        starts[key].append(r[4])
                    conn.commit()
                mine.extend((r[0], r[3]) for r in rows)
                # finish some held jobs
                rnd.shuffle(mine)
                while mine and (len(mine) > 3 or rnd.random() < 0.5):
                    jid, tok = mine.pop()
                    how = rnd.choice(["complete", "complete", "hand_back", "fail"])
                    if how == "complete":
                        q = (
                            "UPDATE jobs SET state = 'completed', completed_at = now(), heartbeat_at = NULL"
                            " WHERE id = %s AND state = 'executing' AND claim_token = %s::uuid RETURNING id"
                        )
                    elif how == "hand_back":
                        q = (
                            "UPDATE jobs SET state = 'available', attempt = attempt - 1, heartbeat_at = NULL,"
                            " scheduled_at = now() WHERE id = %s AND state = 'executing'"
                            " AND claim_token = %s::uuid RETURNING id"
                        )
                    else:
                        q = (
                            "UPDATE jobs SET state = 'retryable', scheduled_at = now(), heartbeat_at = NULL"
                            " WHERE id = %s AND state = 'executing' AND claim_token = %s::uuid RETURNING id"
                        )
                    if conn.execute(q, (jid, tok)).fetchone() is None:
                        errors.append(f"lost job {jid} nobody else touched")
                    with lock:
                        held.pop(jid, None)
                        conn.commit()
                time.sleep(rnd.random() * 0.003)

    def stager() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            flip = False
            while not stop.is_set():
                conn.execute(
                    "UPDATE jobs SET state = 'available' WHERE state IN ('scheduled', 'retryable')"
                    " AND scheduled_at <= now()"
                )
                if toggle:
                    flip = not flip
                    conn.execute("UPDATE queues SET fair = %s WHERE name = 'race'", (flip,))
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)] + [threading.Thread(target=stager)]
    for thread in threads:
        thread.start()
    # SECONDS at least, and on until enough claims to mean something (a slow, shared box may take
    # longer); claiming stuck still fails below
    deadline = time.monotonic() + SECONDS * 20
    time.sleep(SECONDS)
    while sum(len(v) for v in list(starts.values())) <= 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    if rate:
        limit, period = (5, 0.3) if "'tenant'" in rules else (3, 0.2)
        for key, ss in starts.items():
            ss.sort()
            for i in range(len(ss) - limit):
                if (ss[i + limit] - ss[i]).total_seconds() < period:
                    errors.append(f"key {key}: {limit + 1} starts within {(ss[i + limit] - ss[i]).total_seconds()}s")
                    break
    claims = sum(len(v) for v in starts.values())
    assert claims > 20
    assert not errors, errors[:10]
