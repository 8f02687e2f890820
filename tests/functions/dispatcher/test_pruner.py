"""The pruner deletes old final machine rows in bounded batches, like jobs, and the launch count
of /metrics does not go down when it does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from functions.dispatcher.maintenance import Pruner
from functions.ingress.metrics import database_families
from shared.db.pool import Pool, open_pool

DAY = 86_400.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await open_pool(database_url, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def _machine(pool: Pool, machine_id: str, *, ago: float, state: str) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO machines (id, queue, launcher, state, launched_at, started_at, exited_at, exit_code)
               VALUES (%(id)s, 'default', 'local', %(state)s, now() - make_interval(secs => %(ago)s + 60),
                       now() - make_interval(secs => %(ago)s + 59),
                       CASE WHEN %(state)s IN ('exited', 'failed') THEN now() - make_interval(secs => %(ago)s) END,
                       CASE WHEN %(state)s = 'exited' THEN 0 END)""",
            {"id": machine_id, "ago": ago, "state": state},
        )


async def _machine_ids(pool: Pool) -> set[str]:
    async with pool.connection() as conn:
        return {row["id"] for row in await (await conn.execute("SELECT id FROM machines")).fetchall()}


async def _launches(pool: Pool) -> dict[tuple[str, ...], float]:
    families = {family.name: family for family in await database_families(pool)}
    return {tuple(s.labels.values()): s.value for s in families["machine_launches"].samples}


async def test_old_final_machines_are_pruned_in_batches_and_still_counted(pool: Pool):
    await _machine(pool, "old-exited", ago=2 * DAY, state="exited")
    await _machine(pool, "old-failed", ago=3 * DAY, state="failed")
    await _machine(pool, "recent-exited", ago=60, state="exited")
    await _machine(pool, "old-running", ago=2 * DAY, state="running")
    # Exited long ago but still named as the holder of an executing job: the lifeline needs it.
    await _machine(pool, "old-holding", ago=2 * DAY, state="exited")
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO jobs (queue, worker, tenant_id, state, attempt, attempted_by, attempted_at, heartbeat_at,
                                 claim_token)
               VALUES ('default', 'echo', 't', 'executing', 1, 'old-holding', now(), now(), gen_random_uuid())"""
        )
    launches = await _launches(pool)
    assert launches == {("default", "local"): 5.0}

    pruner = Pruner(pool, max_age_seconds=DAY, machine_batch=1)
    await pruner.run_once()
    remaining = await _machine_ids(pool)
    assert len({"old-exited", "old-failed"} & remaining) == 1, "one batch of one row"
    await pruner.run_once()
    assert await _machine_ids(pool) == {"recent-exited", "old-running", "old-holding"}
    assert await _launches(pool) == launches


async def test_old_workflows_and_batches_go_once_their_jobs_are_gone(pool: Pool):
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO workflows (id, tenant_id, inserted_at) VALUES
                   ('00000000-0000-0000-0000-000000000001', 't', now() - interval '3 days'),
                   ('00000000-0000-0000-0000-000000000002', 't', now() - interval '3 days'),
                   ('00000000-0000-0000-0000-000000000003', 't', now());
               INSERT INTO batches (id, tenant_id, total, inserted_at) VALUES
                   ('old-empty', 't', 1, now() - interval '3 days'), ('old-live', 't', 1, now() - interval '3 days'),
                   ('recent', 't', 1, now());
               INSERT INTO jobs (queue, worker, tenant_id, workflow_id, batch_id)
               VALUES ('default', 'echo', 't', '00000000-0000-0000-0000-000000000002', 'old-live');"""
        )
    await Pruner(pool, max_age_seconds=DAY).run_once()
    async with pool.connection() as conn:
        workflows = {str(r["id"])[-1] for r in await (await conn.execute("SELECT id FROM workflows")).fetchall()}
        batches = {r["id"] for r in await (await conn.execute("SELECT id FROM batches")).fetchall()}
    assert workflows == {"2", "3"} and batches == {"old-live", "recent"}
