"""A machine's completions and heartbeats under concurrent changes of the same job.

Each test holds a concurrent change in an open transaction, starts the machine's write on a second
connection (READ COMMITTED), waits until that write is blocked on the row lock, then commits the
change: the write must re-check its fence on the newest row version (EvalPlanQual), and a retried
completion must recognise its own first try. (Written by an adversarial review of the by-primary-
key completion, tests/shared/db/test_engine_plans.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from shared.db import job_store, transitions
from shared.db.models import Fence, Job, NewJob
from shared.db.pool import connect


@pytest.fixture
async def conns(settings: Any) -> AsyncIterator[tuple[Any, Any, Any, Job]]:
    """(interferer, machine's connection, observer, a job held by m1)."""
    a, b, c = [await connect(settings.database_url) for _ in range(3)]
    async with a, b, c:
        for conn in (a, b, c):
            await conn.set_autocommit(True)
        await c.execute("INSERT INTO machines (id, queue, launcher) VALUES ('m1', 'default', 'local')")
        await c.execute("INSERT INTO machines (id, queue, launcher) VALUES ('m2', 'default', 'local')")
        await job_store.insert_job(c, NewJob(queue="default", worker="echo", tenant_id="t1", args={}))
        [held] = await transitions.claim(c, queue="default", machine_id="m1", max_jobs=1)
        yield a, b, c, held


async def _blocked(observer: Any, pid: int) -> None:
    for _ in range(500):
        cur = await observer.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cur.fetchone()
        if row and row["wait_event_type"] == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the write never waited for the concurrent change")


async def _race(conns: Any, interfere: Callable[[Any, Job], Awaitable[None]], write: Callable[[Any, Job], Any]) -> Any:
    a, b, c, held = conns
    async with a.transaction():
        await interfere(a, held)
        task = asyncio.ensure_future(write(b, held))
        await _blocked(c, b.info.backend_pid)
    return await task


def _complete(conn: Any, held: Job) -> Any:
    return transitions.complete_many(conn, done=[(Fence.of(held), {"r": 1})], machine_id="m1")


async def _state(c: Any, held: Job) -> dict[str, Any]:
    cur = await c.execute(
        "SELECT state, claim_token, attempted_by, result, progress,"
        " (SELECT jobs_run FROM machines WHERE id = 'm1') AS m1_run FROM jobs WHERE id = %s",
        (held.id,),
    )
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def test_completion_behind_a_cancel_completes_nothing(conns):
    async def cancel(a: Any, held: Job) -> None:
        await a.execute(
            "UPDATE jobs SET state = 'cancelled', cancelled_at = now(), heartbeat_at = NULL WHERE id = %s", (held.id,)
        )

    assert await _race(conns, cancel, _complete) == (set(), set())
    after = await _state(conns[2], conns[3])
    assert (after["state"], after["result"], after["m1_run"]) == ("cancelled", None, 0)


async def test_completion_behind_a_rescue_completes_nothing(conns):
    async def rescue(a: Any, held: Job) -> None:
        await a.execute("UPDATE jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (held.id,))
        assert [r.id for r in await transitions.rescue_stale(a, rescue_after_seconds=60)] == [held.id]

    assert await _race(conns, rescue, _complete) == (set(), set())
    after = await _state(conns[2], conns[3])
    assert (after["state"], after["m1_run"]) == ("retryable", 0)


async def test_completion_behind_a_hand_back_and_a_new_claim_leaves_the_new_claim_alone(conns):
    async def reclaim(a: Any, held: Job) -> None:
        await transitions.hand_back(a, Fence.of(held))
        [again] = await transitions.claim(a, queue="default", machine_id="m2", max_jobs=1)
        assert again.id == held.id and again.claim_token != held.claim_token

    assert await _race(conns, reclaim, _complete) == (set(), set())
    after = await _state(conns[2], conns[3])
    assert (after["state"], after["attempted_by"], after["result"], after["m1_run"]) == ("executing", "m2", None, 0)


async def test_completion_behind_a_heartbeat_still_completes(conns):
    async def beat(a: Any, held: Job) -> None:
        assert await transitions.heartbeat(a, held=[Fence.of(held)], progress=[{"p": 1}]) == {held.id}

    assert await _race(conns, beat, _complete) == ({conns[3].id}, {conns[3].id})
    after = await _state(conns[2], conns[3])
    assert (after["state"], after["result"], after["progress"], after["m1_run"]) == ("completed", {"r": 1}, {"p": 1}, 1)


async def test_heartbeat_behind_a_completion_holds_nothing(conns):
    async def complete(a: Any, held: Job) -> None:
        await _complete(a, held)

    def beat(b: Any, held: Job) -> Any:
        return transitions.heartbeat(b, held=[Fence.of(held)], progress=[{"p": 2}])

    assert await _race(conns, complete, beat) == set()
    after = await _state(conns[2], conns[3])
    assert (after["state"], after["progress"], after["m1_run"]) == ("completed", None, 1)


async def test_heartbeat_behind_a_hand_back_and_new_claim_holds_nothing(conns):
    async def reclaim(a: Any, held: Job) -> None:
        await transitions.hand_back(a, Fence.of(held))
        await transitions.claim(a, queue="default", machine_id="m2", max_jobs=1)

    def beat(b: Any, held: Job) -> Any:
        return transitions.heartbeat(b, held=[Fence.of(held)], progress=[{"p": 2}])

    assert await _race(conns, reclaim, beat) == set()
    assert (await _state(conns[2], conns[3]))["progress"] is None


async def test_a_retried_completion_racing_its_first_try_recognises_it(conns):
    """The recorder retries a batch whose reply was lost; the first try's backend may still be
    running (the server has not noticed the dropped connection). The retry then waits for it and,
    after its commit, must not report the job lost: its outputs would be withdrawn although the
    job is recorded as completed with them."""

    async def first_try(a: Any, held: Job) -> None:
        assert await _complete(a, held) == ({held.id}, {held.id})

    assert await _race(conns, first_try, _complete) == ({conns[3].id}, set())
    assert (await _state(conns[2], conns[3]))["m1_run"] == 1
