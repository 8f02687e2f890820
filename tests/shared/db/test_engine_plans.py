"""A machine's fenced writes read their own rows, whatever the planner's statistics say.

The statistics of `jobs` are often stale in the direction that hurts: ANALYZEd while a backlog was
all available (a bulk insert, a fresh queue), they say almost no job is executing or completed,
and a plan may then read a partial index of every executing or completed job to find a batch's
ten. That made each completion batch cost as much as every completion before it (a drain quadratic
in its length, found by profiling the engine benchmark). Each write must reach its rows by primary
key whatever the estimates, as a custom plan and as the generic plan a prepared statement may use.
A claim must not read the backlog either when its connection first planned on an empty table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from shared.db import transitions
from shared.db.models import Fence, Job
from shared.db.pool import connect
from shared.db.sql import QUERIES

from .plan_reading import NESTED_PLANS, jit_compiled, jobs_scans, nodes

BACKLOG = 3000
COMPLETED_FIRST = 2000
OTHERS_HELD = 500
BATCH = 10


async def _rows_read(conn: Any, query: str, params: dict[str, Any], *, generic: bool) -> dict[str, int]:
    """Rows each scan of `jobs` returned when `query` ran (rolled back): EXPLAIN ANALYZE of a
    custom plan, or auto_explain of the statement prepared with a generic plan."""
    notes: list[str] = []
    async with conn.transaction(force_rollback=True):
        if generic:
            conn.add_notice_handler(lambda diag: notes.append(diag.message_primary or ""))
            await conn.execute("LOAD 'auto_explain'")
            for setting in (
                "plan_cache_mode = force_generic_plan",
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_analyze = on",
                "auto_explain.log_format = json",
                "auto_explain.log_level = notice",
            ):
                await conn.execute(f"SET LOCAL {setting}")
            await conn.execute(query, params, prepare=True)
            [plan] = [json.loads(note.split("plan:", 1)[1])["Plan"] for note in notes if "jobs" in note]
        else:
            cur = await conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params)
            row = await cur.fetchone()
            assert row is not None
            plan = row["QUERY PLAN"][0]["Plan"]
    return {
        f"{node['Node Type']} {node.get('Index Name', '')}": node["Actual Rows"] * node["Actual Loops"]
        for node in nodes(plan)
        if node.get("Relation Name") == "jobs" and "Scan" in node["Node Type"]
    }


@pytest.fixture
async def stale(settings: Any) -> AsyncIterator[tuple[Any, list[Job]]]:
    """A connection to a queue whose statistics say every job is available, while 2,000 are
    completed, 500 held by another machine and BATCH held by `m1` (returned)."""
    conn = await connect(settings.database_url)
    async with conn:
        await conn.set_autocommit(True)
        await conn.execute('UPDATE queues SET "limit" = 1000 WHERE name = %s', ("default",))
        await conn.execute(
            "INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, max_attempts)"
            " SELECT 'default', 'echo', 'available', 't1', '{}', '{}', 5 FROM generate_series(1, %s)",
            (BACKLOG,),
        )
        await conn.execute("ANALYZE jobs")  # every job available: none executing or completed
        await conn.execute("INSERT INTO machines (id, queue, launcher) VALUES ('m1', 'default', 'local')")
        others = await transitions.claim(conn, queue="default", machine_id="m2", max_jobs=OTHERS_HELD)
        assert len(others) == OTHERS_HELD
        for _ in range(COMPLETED_FIRST // 200):
            held = await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=200)
            completed, _ = await transitions.complete_many(
                conn, done=[(Fence.of(job), {}) for job in held], machine_id="m1"
            )
            assert len(completed) == 200
        yield conn, await transitions.claim(conn, queue="default", machine_id="m1", max_jobs=BATCH)


def _batch(held: list[Job]) -> dict[str, Any]:
    return {
        "job_ids": [job.id for job in held],
        "claim_tokens": [job.claim_token for job in held],
        "progress": [None] * len(held),
    }


def _one(held: list[Job]) -> dict[str, Any]:
    return {"job_id": held[0].id, "claim_token": held[0].claim_token}


FENCED_WRITES = {
    "complete_jobs": lambda held: {**_batch(held), "results": [Jsonb({})] * len(held), "machine_id": "m1"},
    "heartbeat_jobs": _batch,
    "complete_job": lambda held: {**_one(held), "result": Jsonb({})},
    "fail_job": lambda held: {**_one(held), "state": "retryable", "retry_at": None, "error": Jsonb({"kind": "x"})},
    "snooze_job": lambda held: {**_one(held), "seconds": 5},
    "hand_back_job": _one,
}


@pytest.mark.parametrize("generic", [False, True], ids=["custom plan", "generic plan"])
@pytest.mark.parametrize("name", list(FENCED_WRITES))
async def test_a_fenced_write_reads_only_its_rows_when_statistics_say_none_is_held(stale, name, generic):
    conn, held = stale
    read = await _rows_read(conn, QUERIES[name], FENCED_WRITES[name](held), generic=generic)
    # Its rows (read once more at most), not the 2,000 completed jobs nor the 500 others in flight.
    assert read and sum(read.values()) <= 2 * BATCH, read


async def test_a_completion_batch_still_completes_and_recognises_its_retry(stale):
    conn, held = stale
    done: list[tuple[Fence, dict[str, Any]]] = [(Fence.of(job), {}) for job in held]
    completed, fresh = await transitions.complete_many(conn, done=done, machine_id="m1")
    assert completed == fresh == {job.id for job in held}
    # The same batch again (a reply lost after its commit): recognised, not counted twice.
    again, fresh_again = await transitions.complete_many(conn, done=done, machine_id="m1")
    assert (again, fresh_again) == ({job.id for job in held}, set())
    # A claim that is not this one's completes nothing.
    stranger: list[tuple[Fence, dict[str, Any]]] = [
        (Fence(job_id=held[0].id, claim_token=uuid.uuid4(), machine_id="m1"), {})
    ]
    assert await transitions.complete_many(conn, done=stranger, machine_id="m1") == (set(), set())
    cur = await conn.execute("SELECT jobs_run FROM machines WHERE id = 'm1'")
    assert await cur.fetchone() == {"jobs_run": COMPLETED_FIRST + BATCH}


@pytest.mark.parametrize(
    ("fair", "tenants", "crowd", "cap"),
    [
        (False, 1, None, None),
        (True, 2, None, None),
        (True, 1, None, None),
        (True, 2, "others", None),
        (True, 2, "same-tenants", None),
        (True, 2, None, 1000),
    ],
    # fair-alone: a fair queue with one tenant at work (its claims list the tenants, then go FIFO);
    # fair-crowded: another queue of the table has a backlog of 200 other tenants, or of the same
    # tenants and one more; fair-capped: a cap that never binds sends the claim down the general path
    ids=["fifo", "fair", "fair-alone", "fair-crowded", "fair-crowded-same-tenants", "fair-capped"],
)
@pytest.mark.parametrize("planned_on", ["empty-table", "analyzed-backlog"])
async def test_a_claim_reads_only_what_it_claims_however_its_plan_was_made(
    settings, fair, tenants, crowd, cap, planned_on
):
    """claim_jobs plans each statement once per connection (migrations/0013), so a plan made while
    `jobs` was empty (a fresh deployment) is kept for the backlog that follows until the next
    ANALYZE: it must not read that backlog. A forced generic plan alone did (tried for issue 15,
    dropped: every job by sequential scan, 20,010 rows per claim; from an adversarial review). A plan
    made with the statistics of a large backlog, which guess a tenth of it for `LIMIT`, must not
    sort it either. Rows are not enough to count: an index scan that checks a later column of the
    index inside it reads the whole index and returns only its rows, so the pages count too
    (migrations/0015: FIFO's update by id read 1,400 pages per claim that way)."""
    queue = (f"fair{tenants}" if fair else "fifo") + ("-capped" if cap else "")
    claimer, other = await connect(settings.database_url), await connect(settings.database_url)
    async with claimer, other:
        await other.execute("ALTER TABLE jobs SET (autovacuum_enabled = off)")  # no ANALYZE comes to help
        await other.execute(
            'INSERT INTO queues (name, "limit", fair, tenant_limit) VALUES (%s, 1000, %s, %s)', (queue, fair, cap)
        )

        async def backlog() -> None:
            await other.execute(
                "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts)"
                " SELECT %s, 'echo', 't' || (i %% %s), '{}', '{}', 5 FROM generate_series(1, %s) i",
                (queue, tenants, 20_000),  # fair with two tenants takes the fair pick; with one, FIFO
            )
            if crowd:
                # the same tenants with their own times, or 200 others inserted at one time
                tenant, time = ("'c' || (i % 200)", "now()")
                if crowd == "same-tenants":
                    tenant, time = ("'t' || (i % 3)", "now() - i * interval '1 ms'")
                await other.execute("INSERT INTO queues (name, \"limit\", fair) VALUES ('crowd', 10, true)")
                await other.execute(
                    "INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts, scheduled_at)"
                    f" SELECT 'crowd', 'echo', {tenant}, '{{}}', '{{}}', 5, {time} FROM generate_series(1, 20000) i"
                )

        if planned_on == "empty-table":
            await other.execute("VACUUM ANALYZE jobs")  # empty
            assert await transitions.claim(claimer, queue=queue, machine_id="m1", max_jobs=BATCH) == []
            await backlog()
        else:
            await backlog()
            await other.execute("VACUUM ANALYZE jobs")
            assert len(await transitions.claim(claimer, queue=queue, machine_id="m1", max_jobs=BATCH)) == BATCH
        notes: list[str] = []
        claimer.add_notice_handler(lambda diag: notes.append(diag.message_primary or ""))
        async with claimer.transaction(force_rollback=True):
            await claimer.execute("LOAD 'auto_explain'")
            for setting in NESTED_PLANS:
                await claimer.execute(f"SET LOCAL {setting}")
            claimed = await transitions.claim(claimer, queue=queue, machine_id="m1", max_jobs=BATCH)
    assert len(claimed) == BATCH
    read = pages = 0
    for node in jobs_scans(notes):
        # rows a scan read and then threw away count as read (EXPLAIN gives both per loop)
        read += int((node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"])
        # and the pages it touched (all loops): an index scan that checks its condition inside the
        # index (a column after the first) reads it whole without a row to show
        pages += node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
    assert read <= 10 * BATCH, read  # the picked rows (and the queue's running count), not 20,000
    assert pages <= 20 * BATCH, pages  # a few index pages and the heap page of each picked row
    assert jit_compiled(notes) == []  # a sort turned off costs 1e10 on paper: enough to JIT-compile
