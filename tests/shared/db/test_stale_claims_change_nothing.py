"""Every fenced write with a stale claim token, after the job was rescued, handed back or snoozed
and claimed again by another machine, changes nothing (an adversarial review's check, kept)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.db import job_store, transitions
from shared.db.job_store import Conn
from shared.db.models import Fence, NewJob
from shared.db.pool import connect
from shared.errors import LostJobError
from shared.settings import Settings


async def _snapshot(conn: Conn, ids: list[int]) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT id, state, attempt, claim_token, attempted_by, result, errors, heartbeat_at, scheduled_at"
        " FROM jobs WHERE id = ANY(%s) ORDER BY id",
        (ids,),
    )
    return [dict(r) for r in await cur.fetchall()]


@pytest.mark.parametrize("via", ["rescue", "hand_back", "snooze"])
async def test_stale_tokens_change_nothing(settings: Settings, via: str) -> None:
    conn = await connect(settings.database_url)
    async with conn:
        await conn.set_autocommit(True)
        for m in ("m1", "m2"):
            await conn.execute("INSERT INTO machines (id, queue, launcher) VALUES (%s, 'default', 'local')", (m,))
        await job_store.insert_jobs(
            conn, [NewJob(queue="default", worker="echo", tenant_id="t1", args={}) for _ in range(2)]
        )
        old = await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=2)
        assert len(old) == 2
        stale = [Fence.of(j) for j in old]
        ids = [j.id for j in old]
        if via == "rescue":
            await conn.execute("UPDATE jobs SET heartbeat_at = now() - interval '1 hour'")
            assert len(await transitions.rescue_stale(conn, rescue_after_seconds=30)) == 2
        elif via == "hand_back":
            for f in stale:
                await transitions.hand_back(conn, f)
        else:
            for f in stale:
                await transitions.snooze(conn, f, seconds=0)
        await conn.execute(
            "UPDATE jobs SET state = 'available', scheduled_at = now() WHERE state IN ('retryable', 'scheduled')"
        )
        new = await transitions.claim(conn, queue="default", machine_id="m2", max_jobs=2)
        assert sorted(j.id for j in new) == sorted(ids)
        before = await _snapshot(conn, ids)

        for f in stale:
            with pytest.raises(LostJobError):
                await transitions.complete(conn, f, result={"stale": True})
            with pytest.raises(LostJobError):
                await transitions.fail(
                    conn, f, decision=transitions.Retry(at=datetime.now(UTC)), error={"error": "stale"}
                )
            with pytest.raises(LostJobError):
                await transitions.snooze(conn, f, seconds=10)
            with pytest.raises(LostJobError):
                await transitions.hand_back(conn, f)
        completed, fresh = await transitions.complete_many(
            conn, done=[(f, {"stale": True}) for f in stale], machine_id="m1"
        )
        assert completed == set() and fresh == set()
        assert await transitions.heartbeat(conn, held=stale) == set()
        after = await _snapshot(conn, ids)
        # heartbeats are not compared: none of ours went through
        assert after == before
        cur = await conn.execute("SELECT jobs_run FROM machines WHERE id = 'm1'")
        assert await cur.fetchone() == {"jobs_run": 0}
