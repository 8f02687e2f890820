"""The queue's limit and pause hold exactly under concurrent claims, against a real Postgres.

A claim holds what makes its count exact (the queue's row) until it commits; these tests keep a
claim open in a transaction to show that a pause waits for it, and lower a limit under running jobs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg.rows import tuple_row

from shared.db import job_store, transitions
from shared.db.models import Job, NewJob
from shared.db.pool import connect
from shared.settings import Settings


def new(n: int) -> NewJob:
    return NewJob(queue="default", worker="echo", tenant_id="t1", args={"n": n})


async def sql(settings: Settings, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = await connect(settings.database_url)
    async with conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        return list(await cur.fetchall()) if cur.description else []


async def setup(settings: Settings, limit: int, jobs: int) -> None:
    await sql(settings, 'UPDATE queues SET "limit" = %s WHERE name = %s', (limit, "default"))
    conn = await connect(settings.database_url)
    async with conn:
        await job_store.insert_jobs(conn, [new(n) for n in range(jobs)])


async def claim(settings: Settings, max_jobs: int, machine: str = "m1") -> list[Job]:
    conn = await connect(settings.database_url)
    async with conn:
        return await transitions.claim(conn, queue="default", machine_id=machine, max_jobs=max_jobs)


async def executing(settings: Settings) -> int:
    [(n,)] = await sql(settings, "SELECT count(*) FROM jobs WHERE state = 'executing'")
    return int(n)


async def finish(settings: Settings, where: str) -> None:
    await sql(
        settings,
        f"UPDATE jobs SET state = 'completed', completed_at = now() WHERE state = 'executing' AND ({where})",
    )


@pytest.mark.parametrize("limit", [1, 3, 8, 13])
async def test_concurrent_claims_fill_the_limit_exactly_and_never_pass_it(settings, limit):
    await setup(settings, limit, 60)

    async def claimer(n: int) -> int:
        got = 0
        for _ in range(3):
            got += len(await claim(settings, 4, machine=f"m{n}"))
        return got

    total = sum(await asyncio.gather(*(claimer(n) for n in range(24))))
    # One more claim with room for the whole limit.
    total += len(await claim(settings, limit))
    assert total == limit
    assert await executing(settings) == limit
    # Jobs that finish free their room, and only as much as they held.
    await finish(settings, "id IN (SELECT id FROM jobs WHERE state = 'executing' ORDER BY id LIMIT 1)")
    assert len(await claim(settings, limit)) == 1
    assert await executing(settings) == limit
    [(twice,)] = await sql(settings, "SELECT count(*) FROM jobs WHERE attempt > 1")
    assert twice == 0


async def _waits_on_a_lock(settings: Settings, pid: int) -> bool:
    for _ in range(200):
        [(event,)] = await sql(settings, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
        if event == "Lock":
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_pause_waits_for_the_claims_in_flight_and_every_later_claim_sees_it(settings):
    await setup(settings, 100, 20)
    holder = await connect(settings.database_url)
    pauser = await connect(settings.database_url)
    try:
        await holder.execute("BEGIN")
        assert len(await transitions.claim(holder, queue="default", machine_id="m1", max_jobs=2)) == 2
        pausing = asyncio.create_task(pauser.execute("UPDATE queues SET paused = true WHERE name = 'default'"))
        assert await _waits_on_a_lock(settings, pauser.info.backend_pid)
        assert not pausing.done()
        await holder.execute("COMMIT")
        await asyncio.wait_for(pausing, timeout=30)
    finally:
        await holder.close()
        await pauser.close()
    assert await claim(settings, 5) == []
    assert await executing(settings) == 2


async def test_after_a_limit_is_lowered_nothing_starts_until_the_queue_is_under_it(settings):
    await setup(settings, 8, 40)
    assert len(await claim(settings, 8)) == 8
    await sql(settings, "UPDATE queues SET \"limit\" = 2 WHERE name = 'default'")
    assert await claim(settings, 5) == []
    await finish(settings, "id IN (SELECT id FROM jobs WHERE state = 'executing' ORDER BY id LIMIT 6)")
    assert await executing(settings) == 2
    assert await claim(settings, 5) == []
    await finish(settings, "id IN (SELECT id FROM jobs WHERE state = 'executing' ORDER BY id LIMIT 1)")
    assert len(await claim(settings, 5)) == 1
    assert await executing(settings) == 2
    assert await claim(settings, 5) == []
