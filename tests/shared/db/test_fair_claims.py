"""Fair claims between tenants, per-tenant caps and rate limits per key, against a real Postgres.

The rules live in `claim_jobs` under the queue's row lock, so these drive the claim statement
itself (several connections at once where the rule is about concurrency).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from psycopg.rows import tuple_row

from shared.db import job_store, transitions
from shared.db.models import Job, NewJob
from shared.db.pool import connect
from shared.settings import Settings


def new(tenant: str, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {"queue": "default", "worker": "echo", "tenant_id": tenant, "args": {}}
    values.update(overrides)
    return NewJob(**values)


async def seed(settings: Settings, jobs: list[NewJob]) -> list[Job]:
    conn = await connect(settings.database_url)
    async with conn:
        return await job_store.insert_jobs(conn, jobs)


async def sql(settings: Settings, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = await connect(settings.database_url)
    async with conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return list(await cur.fetchall()) if cur.description else []


async def claim(settings: Settings, max_jobs: int, queue: str = "default", machine: str = "m1") -> list[Job]:
    conn = await connect(settings.database_url)
    async with conn:
        return await transitions.claim(conn, queue=queue, machine_id=machine, max_jobs=max_jobs)


async def claim_one_by_one(settings: Settings, count: int) -> list[str]:
    """Tenants of `count` claims of one job each (each job completed before the next claim).

    Each claim lists the tenants with due jobs afresh, as one does 50 ms after the last listing
    (the listing's cache has a test of its own)."""
    order = []
    conn = await connect(settings.database_url)
    async with conn:
        for _ in range(count):
            await conn.execute("UPDATE queues SET tenants_scanned_at = NULL")
            [job] = await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=1)
            order.append(job.tenant_id)
            await conn.execute("UPDATE jobs SET state = 'completed', completed_at = now() WHERE id = %s", (job.id,))
    return order


async def test_claims_go_round_robin_across_tenants_whatever_their_backlog(settings):
    # a's backlog is older than everything b and c enqueue: FIFO would run all of it first.
    await seed(settings, [new("a") for _ in range(30)])
    await seed(settings, [new("b") for _ in range(2)] + [new("c") for _ in range(2)])
    assert await claim_one_by_one(settings, 8) == ["a", "b", "c", "a", "b", "c", "a", "a"]


async def test_one_claim_of_several_jobs_shares_them_between_tenants(settings):
    await seed(settings, [new("a") for _ in range(30)] + [new("b") for _ in range(30)] + [new("c")])
    claimed = await claim(settings, 7)
    tenants = sorted(job.tenant_id for job in claimed)
    assert tenants == ["a", "a", "a", "b", "b", "b", "c"]


async def test_a_tenant_that_comes_back_takes_turns_without_credit_for_its_pause(settings):
    await seed(settings, [new("a") for _ in range(20)] + [new("b")])
    assert await claim_one_by_one(settings, 6) == ["a", "b", "a", "a", "a", "a"]
    # b had nothing to run for four turns: it rejoins the round, it does not get four turns in a
    # row to make up for them (nor does a owe the turns it took alone).
    await seed(settings, [new("b") for _ in range(5)])
    assert await claim_one_by_one(settings, 4) == ["a", "b", "a", "b"]


async def test_a_new_tenant_is_seen_when_the_tenants_are_listed_again_however_busy_the_queue(settings):
    await seed(settings, [new("a") for _ in range(30)])
    assert {job.tenant_id for job in await claim(settings, 2)} == {"a"}
    # b arrives while a fills every claim: claims use the tenants listed at most 50 ms ago...
    await seed(settings, [new("b") for _ in range(3)])
    await sql(settings, "UPDATE queues SET tenants_scanned_at = clock_timestamp() + interval '1 hour'")
    assert {job.tenant_id for job in await claim(settings, 2)} == {"a"}
    # ... and list them again after that (here: the last listing is made an hour old).
    await sql(settings, "UPDATE queues SET tenants_scanned_at = clock_timestamp() - interval '1 hour'")
    assert sorted(job.tenant_id for job in await claim(settings, 2)) == ["a", "b"]


async def test_a_claim_the_listed_tenants_cannot_fill_lists_them_again(settings):
    await seed(settings, [new("a")])
    assert [job.tenant_id for job in await claim(settings, 5)] == ["a"]
    await seed(settings, [new("b")])
    await sql(settings, "UPDATE queues SET tenants_scanned_at = clock_timestamp() + interval '1 hour'")
    # a has nothing left and b was not listed: the claim lists the tenants rather than come back empty.
    assert [job.tenant_id for job in await claim(settings, 5)] == ["b"]


@pytest.mark.parametrize("cap", [None, 1000], ids=["fairness alone", "with a cap"])
async def test_a_tenant_whose_only_job_is_not_due_yet_takes_no_turn(settings, cap):
    await sql(settings, "UPDATE queues SET tenant_limit = %s WHERE name = 'default'", (cap,))
    await seed(settings, [new("z") for _ in range(5)])
    # b's one available job is due in an hour (written directly: ingress stores a job for later as
    # `scheduled`, but a claim can meet an available job that is not due for it; see the next test).
    await sql(
        settings,
        "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts, scheduled_at)"
        " VALUES ('default', 'echo', 'b', '{}', '{}', 5, now() + interval '1 hour')",
    )
    await sql(settings, "UPDATE queues SET tenants_scanned_at = NULL")
    # b is first in turn by name; it has nothing to run, so z's jobs go, one claim at a time too.
    assert [job.tenant_id for job in await claim(settings, 1)] == ["z"]
    assert [job.tenant_id for job in await claim(settings, 1)] == ["z"]
    assert sorted(job.tenant_id for job in await claim(settings, 10)) == ["z"] * 3


async def test_a_job_that_comes_while_a_claim_waits_for_the_queue_is_due_for_that_claim(settings):
    await seed(settings, [new("z") for _ in range(5)])
    holder = await connect(settings.database_url)
    async with holder:
        async with holder.transaction():
            await holder.execute("SELECT FROM queues WHERE name = 'default' FOR UPDATE")
            waiting = asyncio.create_task(claim(settings, 1, machine="m2"))
            for _ in range(500):  # until the claim waits for the queue's row lock
                waits = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                [(blocked,)] = await sql(settings, waits)
                if blocked:
                    break
                await asyncio.sleep(0.01)
            assert blocked == 1
            # b's job is inserted (its time is now) after the claim's statement began, before it
            # has the lock; the claim lists the tenants afresh.
            await seed(settings, [new("b")])
            await holder.execute("UPDATE queues SET tenants_scanned_at = NULL WHERE name = 'default'")
        claimed = await asyncio.wait_for(waiting, timeout=30)
    # b is first in turn (by name, as z has had none) and its job is due: it goes; the claim does
    # not come back empty while z has five due jobs.
    assert [job.tenant_id for job in claimed] == ["b"]


async def test_a_tenant_of_weight_two_gets_two_turns_per_round(settings):
    await sql(settings, "INSERT INTO queue_tenants (queue, tenant_id, weight) VALUES ('default', 'a', 2)")
    await seed(settings, [new("a") for _ in range(20)] + [new("b") for _ in range(20)])
    assert await claim_one_by_one(settings, 9) == ["a", "b", "a", "a", "b", "a", "a", "b", "a"]


async def test_priority_orders_a_tenants_own_jobs_but_not_its_turn(settings):
    # b's job has a lower priority (higher number) than all of a's: it still gets b's turn.
    await seed(settings, [new("a", priority=0) for _ in range(5)] + [new("b", priority=5)])
    await seed(settings, [new("a", priority=0, args={"urgent": True})])
    urgent_first = await seed(settings, [new("c", priority=9, args={"n": 1}), new("c", priority=1, args={"n": 2})])
    order = await claim_one_by_one(settings, 3)
    assert order == ["a", "b", "c"]
    [c_job] = await sql(settings, "SELECT id FROM jobs WHERE tenant_id = 'c' AND state = 'completed'")
    assert c_job[0] == urgent_first[1].id  # c's priority-1 job went before its priority-9 one


async def fair_claim_sequence(
    settings: Settings, *, cap: int | None, host_key: bool = False, scenario: int | None = None
) -> list[list[tuple[str, int]]]:
    """(tenant, n) of each claim of a fixed scenario: uneven backlogs, weights, priorities, a tenant
    joining late, tenants running dry, claims of 1 to 7 jobs and some completions in between.
    `host_key`: a per-host rate limit whose windows never fill (the jobs name three hosts).
    `scenario`: a seed; backlogs, weights, priorities and claim sizes drawn at random instead."""
    rnd = random.Random(scenario)
    weights = "('default', 'b', 3), ('default', 'e', 2)"
    backlog = {"a": 25, "b": 12, "c": 3, "d": 1, "e": 9}
    sizes = [1, 3, 7, 2, 5, 1, 6, 4, 7, 3, 2, 7, 5, 7]
    if scenario is not None:
        backlog = {t: rnd.randint(1, 30) for t in "abcdefgh"[: rnd.randint(2, 8)]}
        weights = ", ".join(f"('default', '{t}', {rnd.choice([1, 2, 3, 4, 100])})" for t in backlog)
        sizes = [rnd.choice([1, 2, 3, 5, 8, 13, 30]) for _ in range(14)]
    await sql(settings, "DELETE FROM jobs")
    await sql(settings, "DELETE FROM queue_tenants")
    await sql(settings, "DELETE FROM rate_windows")
    await sql(settings, 'UPDATE queues SET "limit" = 1000, fair_vtime = 0, tenant_limit = %s', (cap,))
    if host_key:
        await sql(settings, "UPDATE queues SET rate_limit = 1000, rate_period_seconds = 60, rate_key = 'host:url'")
    await sql(settings, f"INSERT INTO queue_tenants (queue, tenant_id, weight) VALUES {weights}")
    await seed(
        settings,
        [
            new(
                t,
                args={"n": n, "url": f"https://h{n % 3}.example/x"},
                priority=(n * 7 + (0 if scenario is None else rnd.randint(0, 1))) % 3,
            )
            for t, count in backlog.items()
            for n in range(count)
        ],
    )
    claims: list[list[tuple[str, int]]] = []
    for step, size in enumerate(sizes):
        if step == 4:
            await seed(settings, [new("late", args={"n": n}) for n in range(6)])
        if step % 3 == 2:
            await sql(settings, "UPDATE jobs SET state = 'completed', completed_at = now() WHERE state = 'executing'")
        # Every other claim lists the tenants first; the others start from the last listing
        # (tenants that ran dry still listed, the late one not yet) and list them only when the
        # listed tenants cannot fill them.
        listed = "NULL" if step % 2 == 0 else "clock_timestamp() + interval '1 hour'"
        await sql(settings, f"UPDATE queues SET tenants_scanned_at = {listed}")
        claimed = await claim(settings, size)
        claims.append(sorted((job.tenant_id, job.args["n"]) for job in claimed))
    return claims


async def test_the_fair_claim_without_caps_picks_as_the_general_claim_does(settings):
    # Fairness alone takes a shorter path (one statement, only the tenants next in turn, only the
    # jobs whose turn can come). A cap that never binds sends the same claims down the general
    # path: both must claim the same jobs, claim after claim.
    short = await fair_claim_sequence(settings, cap=None)
    general = await fair_claim_sequence(settings, cap=1000)
    assert short == general, (short, general)
    # Every job claimed once (56 jobs, claims of 60 in all), and claims of several jobs among them.
    flat = [job for c in short for job in c]
    assert len(flat) == len(set(flat)) == 56, short
    assert max(len({tenant for tenant, _ in c}) for c in short) >= 4, short


async def test_a_per_host_key_whose_windows_never_fill_claims_as_fairness_alone_does(settings):
    # With a key derived from the job the general path reads each tenant in turn for its share of
    # the claim + 20 (0019) behind a check that passes over tenants held back by full windows;
    # with windows that never fill, neither may change a claim: the same jobs, claim after claim.
    short = await fair_claim_sequence(settings, cap=None)
    keyed = await fair_claim_sequence(settings, cap=None, host_key=True)
    assert short == keyed, (short, keyed)
    keyed_and_capped = await fair_claim_sequence(settings, cap=1000, host_key=True)
    assert short == keyed_and_capped, (short, keyed_and_capped)


@pytest.mark.parametrize("scenario", range(8))
async def test_the_paths_claim_alike_in_random_scenarios(settings, scenario):
    # The same as the two tests above, over random backlogs, weights, priorities and claim sizes.
    short = await fair_claim_sequence(settings, cap=None, scenario=scenario)
    general = await fair_claim_sequence(settings, cap=1000, scenario=scenario)
    keyed = await fair_claim_sequence(settings, cap=None, host_key=True, scenario=scenario)
    assert short == general, (short, general)
    assert short == keyed, (short, keyed)


async def test_with_fairness_off_claims_are_fifo_across_the_queue(settings):
    await sql(settings, "UPDATE queues SET fair = false WHERE name = 'default'")
    await seed(settings, [new("a") for _ in range(5)])
    await seed(settings, [new("b") for _ in range(2)])
    assert await claim_one_by_one(settings, 7) == ["a"] * 5 + ["b"] * 2


async def test_per_tenant_caps_hold_under_twenty_concurrent_claimers(settings):
    await sql(settings, "UPDATE queues SET \"limit\" = 100, tenant_limit = 3 WHERE name = 'default'")
    await sql(settings, "INSERT INTO queue_tenants (queue, tenant_id, max_running) VALUES ('default', 'b', 5)")
    await seed(settings, [new(t) for t in ("a", "b", "c") for _ in range(40)])

    async def claimer(n: int) -> int:
        claimed = 0
        for _ in range(3):
            claimed += len(await claim(settings, 2, machine=f"m{n}"))
        return claimed

    total = sum(await asyncio.gather(*(claimer(n) for n in range(20))))
    running = dict(
        await sql(settings, "SELECT tenant_id, count(*) FROM jobs WHERE state = 'executing' GROUP BY tenant_id")
    )
    assert running == {"a": 3, "b": 5, "c": 3}
    assert total == 11
    # A finished job frees its tenant's slot, and only that tenant's.
    [(done,)] = await sql(settings, "SELECT id FROM jobs WHERE tenant_id = 'a' AND state = 'executing' LIMIT 1")
    await sql(settings, "UPDATE jobs SET state = 'completed', completed_at = now() WHERE id = %s", (done,))
    assert [job.tenant_id for job in await claim(settings, 10)] == ["a"]


async def test_a_cap_of_zero_holds_a_tenant_back_while_others_run(settings):
    await sql(settings, "INSERT INTO queue_tenants (queue, tenant_id, max_running) VALUES ('default', 'a', 0)")
    await seed(settings, [new("a") for _ in range(5)] + [new("b") for _ in range(2)])
    assert sorted(job.tenant_id for job in await claim(settings, 10)) == ["b", "b"]


async def limit_rate(settings: Settings, *, limit: int, key: str, queue: str = "default") -> None:
    await sql(
        settings,
        'UPDATE queues SET rate_limit = %s, rate_period_seconds = 60, rate_key = %s, "limit" = 100 WHERE name = %s',
        (limit, key, queue),
    )


async def test_jobs_over_a_rate_limit_wait_without_spending_attempts(settings):
    await limit_rate(settings, limit=3, key="tenant")
    await seed(settings, [new("a") for _ in range(10)] + [new("b") for _ in range(2)])
    first = await claim(settings, 20)
    assert sorted(job.tenant_id for job in first) == ["a", "a", "a", "b", "b"]
    # Finishing jobs does not give the window back: only time does.
    await sql(settings, "UPDATE jobs SET state = 'completed', completed_at = now() WHERE state = 'executing'")
    assert await claim(settings, 20) == []
    waiting = await sql(settings, "SELECT state, attempt, errors FROM jobs WHERE state <> 'completed'")
    assert waiting == [("available", 0, [])] * 7
    # The window moves on (as if a minute passed): a's next three start.
    await sql(
        settings, "UPDATE rate_windows SET starts = ARRAY(SELECT s - interval '61 seconds' FROM unnest(starts) s)"
    )
    assert [job.tenant_id for job in await claim(settings, 20)] == ["a"] * 3


async def test_a_rate_limit_holds_across_concurrent_claimers(settings):
    await limit_rate(settings, limit=7, key="tenant")
    await seed(settings, [new("a") for _ in range(50)])
    results = await asyncio.gather(*(claim(settings, 3, machine=f"m{n}") for n in range(20)))
    assert sum(len(r) for r in results) == 7


async def test_a_key_derived_from_the_job_limits_per_destination_host(settings):
    await limit_rate(settings, limit=2, key="host:url", queue="webhooks")

    def hook(tenant: str, url: str) -> NewJob:
        return new(tenant, queue="webhooks", worker="DeliverWebhook", args={"url": url})

    slow = "https://Slow.example.com:8443/hook?x=1"
    await seed(settings, [hook("a", slow) for _ in range(4)] + [hook("a", "https://fast.example/h")])
    await seed(settings, [hook("b", "https://user@slow.example.com/other"), hook("b", "https://fast.example/h")])
    claimed = await claim(settings, 20, queue="webhooks")
    # Two starts for slow.example.com (one per tenant: their turns alternate), every fast.example
    # job; a's later slow jobs do not hold back its fast one.
    assert sorted((job.tenant_id, job.args["url"]) for job in claimed) == [
        ("a", slow),
        ("a", "https://fast.example/h"),
        ("b", "https://fast.example/h"),
        ("b", "https://user@slow.example.com/other"),
    ]
    keys = dict(await sql(settings, "SELECT key, cardinality(starts) FROM rate_windows ORDER BY key"))
    assert keys == {"fast.example": 2, "slow.example.com": 2}


async def test_the_pruner_forgets_quiet_tenants_and_expired_windows_but_not_rules(settings, pool):
    from functions.dispatcher.maintenance import Pruner

    await limit_rate(settings, limit=5, key="tenant")
    await sql(settings, "INSERT INTO queue_tenants (queue, tenant_id, weight) VALUES ('default', 'ruled', 2)")
    await seed(settings, [new("a"), new("b"), new("b")])
    assert len(await claim(settings, 2)) == 2
    await sql(settings, "UPDATE jobs SET state = 'completed', completed_at = now() WHERE state = 'executing'")
    await sql(settings, "UPDATE queues SET tenants_scanned_at = NULL")
    assert len(await claim(settings, 5)) == 1  # a has nothing left: the listing marks it quiet
    await Pruner(pool, max_age_seconds=86_400).run_once()
    assert await sql(settings, "SELECT tenant_id FROM queue_tenants ORDER BY tenant_id") == [("b",), ("ruled",)]
    assert await sql(settings, "SELECT key FROM rate_windows ORDER BY key") == [("a",), ("b",)]  # still in window
    await sql(settings, "UPDATE rate_windows SET starts = ARRAY(SELECT s - interval '2 minutes' FROM unnest(starts) s)")
    await Pruner(pool, max_age_seconds=86_400).run_once()
    assert await sql(settings, "SELECT key FROM rate_windows") == []
