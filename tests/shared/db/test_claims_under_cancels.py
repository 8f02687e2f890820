"""Claimers (0017) against cancels (held a moment, some rolled back), touches
(meta = meta), VACUUM and a rate/cap mix. Every job starts at attempt 0 and is never handed back,
so each may be claimed once: attempt 1, executing, attempted_by the claimer, never also cancelled.
From the second adversarial review of 0017. CLAIM_STRESS_SECONDS (default 1.5) per rule set."""

from __future__ import annotations

import os
import random
import threading
import time

import psycopg
import pytest

LIMIT = 12
SECONDS = float(os.environ.get("CLAIM_STRESS_SECONDS", "1.5"))
RULES = {
    "fair": "fair = true",
    "fair-capped": "fair = true, tenant_limit = 3",
    "fifo-capped": "fair = false, tenant_limit = 3",
    "fair-rate": "fair = true, rate_limit = 4, rate_period_seconds = 0.3, rate_key = 'tenant'",
    "fair-host": "fair = true, rate_limit = 3, rate_period_seconds = 0.2, rate_key = 'host:url'",
}


@pytest.mark.parametrize("rules", RULES.values(), ids=RULES.keys())
def test_claims_with_cancels_touches_and_vacuum(database_url: str, rules: str) -> None:
    capped = "tenant_limit" in rules
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f"INSERT INTO queues (name, \"limit\") VALUES ('race', {LIMIT})")
        c.execute(f"UPDATE queues SET {rules} WHERE name = 'race'")
        c.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts, priority)"
            " SELECT 'race', 'echo', 't' || (g % 7), jsonb_build_object('url', 'https://h' || (g % 4) || '.example/'),"
            "        '{}', 100, g % 3 FROM generate_series(1, 4000) g"
        )
        ids = [r[0] for r in c.execute("SELECT id FROM jobs").fetchall()]
    errors: list[str] = []
    claimed: dict[int, str] = {}
    cancelled: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def claimer(n: int) -> None:
        rnd = random.Random(n)
        machine = f"m{n}"
        with psycopg.connect(database_url) as conn:
            while not stop.is_set() and len(errors) < 5:
                max_jobs = rnd.choice([1, 1, 2, 3, 5, 8])
                prefer = rnd.choice(ids) if rnd.random() < 0.3 else None
                rows = conn.execute(
                    "SELECT id, attempt, state, attempted_by FROM claim_jobs('race', %s, %s, %s)",
                    (machine, max_jobs, prefer),
                ).fetchall()
                got = [r[0] for r in rows]
                if len(set(got)) != len(got):
                    errors.append(f"claim returned a job twice: {got}")
                for jid, attempt, state, by in rows:
                    if attempt != 1 or state != "executing" or by != machine:
                        errors.append(f"returned job {jid}: attempt {attempt} state {state} by {by}")
                if got:
                    now = conn.execute(
                        "SELECT id, attempt, state, attempted_by FROM jobs WHERE id = ANY (%s)", (got,)
                    ).fetchall()
                    for jid, attempt, state, by in now:
                        if attempt != 1 or state != "executing" or by != machine:
                            errors.append(f"job {jid} after claim: attempt {attempt} state {state} by {by}")
                    if len(now) != len(got):
                        errors.append(f"claimed ids missing from jobs: {got}")
                ex = conn.execute(
                    "SELECT tenant_id, count(*) FROM jobs WHERE queue = 'race' AND state = 'executing' GROUP BY 1"
                ).fetchall()
                if sum(k for _, k in ex) > LIMIT:
                    errors.append(f"{sum(k for _, k in ex)} executing > {LIMIT}")
                if capped and any(k > 3 for _, k in ex):
                    errors.append(f"cap broken: {ex}")
                with lock:
                    for jid in got:
                        if jid in claimed:
                            errors.append(f"job {jid} claimed by {claimed[jid]} and again by {machine}")
                        if jid in cancelled:
                            errors.append(f"job {jid} cancelled and claimed by {machine}")
                        claimed[jid] = machine
                    conn.commit()
                # finish: complete everything held so the queue keeps moving
                if got:
                    conn.execute(
                        "UPDATE jobs SET state = 'completed', completed_at = now(), heartbeat_at = NULL"
                        " WHERE id = ANY (%s) AND state = 'executing'",
                        (got,),
                    )
                    conn.commit()

    def canceller(n: int) -> None:
        rnd = random.Random(100 + n)
        with psycopg.connect(database_url) as conn:
            while not stop.is_set():
                pick = rnd.sample(ids, 1)  # one row per transaction: no lock cycles among the test's writers
                done = [
                    r[0]
                    for r in conn.execute(
                        "UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = ANY (%s)"
                        " AND state = 'available' RETURNING id",
                        (pick,),
                    )
                ]
                time.sleep(rnd.random() * 0.004)
                if rnd.random() < 0.3:
                    conn.rollback()
                    continue
                with lock:
                    for jid in done:
                        if jid in claimed:
                            errors.append(f"job {jid} claimed by {claimed[jid]} and then cancelled")
                        cancelled.add(jid)
                    conn.commit()

    def toucher(n: int) -> None:
        rnd = random.Random(200 + n)
        with psycopg.connect(database_url) as conn:
            while not stop.is_set():
                conn.execute("UPDATE jobs SET meta = meta WHERE id = %s", (rnd.choice(ids),))
                if rnd.random() < 0.5:
                    time.sleep(rnd.random() * 0.002)
                conn.commit()

    def vacuumer() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("VACUUM jobs")
                time.sleep(0.02)

    def guarded(fn, *a):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn(*a)
            except Exception as exc:
                errors.append(f"{fn.__name__}{a}: {type(exc).__name__}: {exc}")
                stop.set()

        return run

    threads = (
        [threading.Thread(target=guarded(claimer, i)) for i in range(8)]
        + [threading.Thread(target=guarded(canceller, i)) for i in range(3)]
        + [threading.Thread(target=guarded(toucher, i)) for i in range(3)]
        + [threading.Thread(target=guarded(vacuumer))]
    )
    for t in threads:
        t.start()
    try:
        # SECONDS at least, and on until enough claims to mean something: a slow, shared box may
        # take longer (41 in 1.5 s once, in CI beside other work); claiming stuck still fails.
        deadline = time.monotonic() + SECONDS * 20
        time.sleep(SECONDS)
        while len(claimed) <= 50 and not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert len(claimed) > 50
