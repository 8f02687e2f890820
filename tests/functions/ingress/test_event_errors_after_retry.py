"""A failure event keeps its own error after the job was retried by hand (attempt numbers repeat
then): the event names its entry of the job's errors (0016). From an adversarial review."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg.types.json import Jsonb

from functions.ingress.event_hub import EventFilter, LiveEvent
from shared.db.pool import Pool
from shared.db.sql import QUERIES
from tests.conftest import make_settings
from tests.functions.ingress.test_event_hub import insert, replayed_after, running_hub


async def test_a_replayed_failure_keeps_its_error_after_the_job_was_retried_by_hand(
    database_url: str, pool: Pool
) -> None:
    # README: "a failure [carries] the error of its own attempt (not the job's latest)". retry_job
    # resets `attempt` to 0 and keeps `errors`, so the retried run's attempt 1 fails with an entry
    # of attempt 1 again, and the first run's `discarded` event (attempt 1) is given that one.
    async def run_and_discard(job_id: int, error: str) -> None:
        async with pool.connection() as conn:
            # a claim as claim_jobs makes it (the trigger gives it a new claim_token)
            claimed = await (
                await conn.execute(
                    "UPDATE jobs SET state = 'executing', attempt = attempt + 1, attempted_by = 'm-1',"
                    " attempted_at = now(), heartbeat_at = now() WHERE id = %s RETURNING claim_token, attempt",
                    (job_id,),
                )
            ).fetchone()
            assert claimed is not None
            token, attempt = claimed["claim_token"], claimed["attempt"]
            entry: dict[str, Any] = {"attempt": attempt, "at": "2026-01-01T00:00:00+00:00"}
            entry |= {"kind": "error", "error": error}
            await conn.execute(
                QUERIES["fail_job"],
                {"state": "discarded", "retry_at": None, "error": Jsonb(entry), "job_id": job_id, "claim_token": token},
            )

    async with running_hub(make_settings(database_url), pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events:
            await insert(pool, "acme")
            async with asyncio.timeout(30):
                inserted = await anext(aiter(events))
        assert isinstance(inserted, LiveEvent)
        job_id = inserted.note.job_id
        async with pool.connection() as conn:
            await conn.execute("UPDATE jobs SET max_attempts = 1 WHERE id = %s", (job_id,))
        before = hub.received_total
        await run_and_discard(job_id, "first run")
        async with pool.connection() as conn:
            cur = await conn.execute(QUERIES["retry_job"], {"id": job_id, "tenant_id": None})
            assert await cur.fetchone() is not None
        await run_and_discard(job_id, "second run")
        # executing, discarded, retried, executing, discarded
        replayed = await replayed_after(hub, inserted, before=before, count=5)
    sent = [e.json() for e in replayed if isinstance(e, LiveEvent)]
    assert [(e["type"], e["attempt"], (e["error"] or {}).get("error")) for e in sent if e["type"] == "discarded"] == [
        ("discarded", 1, "first run"),
        ("discarded", 1, "second run"),
    ]
