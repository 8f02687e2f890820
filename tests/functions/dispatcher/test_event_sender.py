"""The leader's `events` duty sends the logged job events (migrations/0012) even when no API
process runs, so the log never grows without bound and a hub that starts later is not flooded."""

from __future__ import annotations

import psycopg

from functions.dispatcher.maintenance import EventSender
from shared.db.pool import Pool
from shared.notify import EVENTS_CHANNEL, job_events


async def test_the_leader_sends_what_is_logged_when_no_hub_does(database_url: str, pool: Pool) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO jobs (queue, worker, tenant_id) SELECT 'default', 'echo', 't' FROM generate_series(1, 12)"
            )
            await conn.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now()")
        assert await EventSender(pool, batch=5).run_once() == 12  # in three flushes of at most 5
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM job_event_log")
            assert await cur.fetchone() == {"n": 0}
        received = [e for note in listener.notifies(timeout=1) for e in job_events(note.payload)]
    assert sorted(e.type for e in received) == ["cancelled"] * 12 + ["inserted"] * 12
