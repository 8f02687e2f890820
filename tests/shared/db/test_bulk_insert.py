"""job_store.insert_job_ids: many jobs go in by COPY (ids reserved beforehand), few by INSERT ...
unnest. Both write the same rows, answer the ids in input order, and fire the same triggers."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from shared.db import batch_store, job_store
from shared.db.job_store import COPY_THRESHOLD, Conn
from shared.db.models import NewJob
from shared.db.pool import connect
from shared.notify import EVENTS_CHANNEL, job_events

# Every column a new job's row gets, from its input or by default, other than the id and the
# insert time (compared on their own below).
COMPARED = (
    "queue, worker, state, tenant_id, args, meta, tags, priority, attempt, max_attempts, errors, result,"
    " batch_id, unique_key, unique_states, attempted_by, heartbeat_at, attempted_at, completed_at,"
    " cancelled_at, discarded_at, claim_token, progress, workflow_id"
)


def varied_jobs(count: int, *, batch_id: str | None = None) -> list[NewJob]:
    """`count` jobs that differ in everything the insert writes: due now, later, or earlier; tags
    none, several, unicode; meta; priority; attempts; batch or none; tenants and queues."""
    now = datetime.now(UTC)
    jobs = []
    for i in range(count):
        scheduled: datetime | None = [None, now + timedelta(hours=1 + i), now - timedelta(minutes=i + 1)][i % 3]
        jobs.append(
            NewJob(
                queue=["default", "emails"][i % 2],
                worker=["echo", "SendEmail"][i % 2],
                tenant_id=f"tenant-{i % 4}",
                args={"n": i, "text": f"é{i}", "nested": {"list": [i, None, True]}},
                meta={"requestId": f"r-{i}", "batchId": batch_id} if batch_id else {"i": i},
                tags=[[], ["a"], ["a", "b-ü", "c d"]][i % 3],
                priority=i % 10,
                max_attempts=1 + i % 100,
                scheduled_at=scheduled,
                batch_id=batch_id if batch_id is not None else [None, f"b-{i % 2}"][i % 2],
            )
        )
    return jobs


async def rows(conn: Conn, ids: list[int]) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT id, inserted_at, scheduled_at, {COMPARED} FROM jobs WHERE id = ANY(%s) ORDER BY id",  # type: ignore[arg-type]
        (ids,),
    )
    return await cur.fetchall()


async def inserted(conn: Conn, jobs: list[NewJob], *, copy: bool) -> tuple[list[int], datetime]:
    """The jobs inserted one way, in a transaction; their ids and the transaction's now()."""
    async with conn.transaction():
        now = (await (await conn.execute("SELECT now() AS now")).fetchone() or {})["now"]
        ids = await (job_store._copy_jobs if copy else job_store._insert_job_ids)(conn, jobs)
    return ids, now


def normalised(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The row with its id dropped and its times relative to its transaction's now()."""
    out = {k: v for k, v in row.items() if k not in ("id", "inserted_at", "scheduled_at")}
    out["inserted_at_is_now"] = row["inserted_at"] == now
    out["scheduled_at"] = "now" if row["scheduled_at"] == now else row["scheduled_at"]
    return out


async def test_copy_writes_the_rows_the_insert_writes(settings):
    jobs = varied_jobs(60)
    conn = await connect(settings.database_url)
    async with conn:
        by_insert, insert_now = await inserted(conn, jobs, copy=False)
        by_copy, copy_now = await inserted(conn, jobs, copy=True)
        insert_rows, copy_rows = await rows(conn, by_insert), await rows(conn, by_copy)
    assert len(insert_rows) == len(copy_rows) == len(jobs)
    assert [normalised(r, copy_now) for r in copy_rows] == [normalised(r, insert_now) for r in insert_rows]
    # What the comparison covers, against the input itself (ids ascend in input order).
    for job, row in zip(jobs, copy_rows, strict=True):
        due_later = job.scheduled_at is not None and job.scheduled_at > copy_now
        assert row["state"] == ("scheduled" if due_later else "available")
        assert row["scheduled_at"] == (job.scheduled_at or copy_now) and row["inserted_at"] == copy_now
        assert (row["args"], row["meta"], row["tags"]) == (job.args, job.meta, job.tags)
        assert (row["priority"], row["max_attempts"], row["batch_id"]) == (job.priority, job.max_attempts, job.batch_id)
        assert (row["tenant_id"], row["queue"], row["worker"]) == (job.tenant_id, job.queue, job.worker)
    assert {r["state"] for r in copy_rows} == {"scheduled", "available"}


@pytest.mark.parametrize("count", [1, COPY_THRESHOLD - 1, COPY_THRESHOLD, 300])
async def test_ids_answer_in_input_order_either_way(settings, count: int):
    jobs = varied_jobs(count)
    conn = await connect(settings.database_url)
    async with conn:
        ids = await job_store.insert_job_ids(conn, jobs)  # autocommit: it makes its own transaction
        cur = await conn.execute("SELECT id, args FROM jobs")
        found = {r["id"]: r["args"] for r in await cur.fetchall()}
    assert ids == sorted(ids) and len(set(ids)) == count
    assert [found[i] for i in ids] == [j.args for j in jobs]


async def test_unique_jobs_are_refused_and_an_empty_list_inserts_nothing(settings):
    conn = await connect(settings.database_url)
    async with conn:
        jobs = [
            *varied_jobs(COPY_THRESHOLD),
            NewJob(queue="default", worker="echo", tenant_id="t", args={}, unique_key="k"),
        ]
        with pytest.raises(ValueError, match="unique"):
            await job_store.insert_job_ids(conn, jobs)
        assert await job_store.insert_job_ids(conn, []) == []
        assert await (await conn.execute("SELECT count(*) AS n FROM jobs")).fetchone() == {"n": 0}


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"priority": 10}, psycopg.errors.CheckViolation),  # a constraint
        ({"args": {"text": "nul \x00"}}, psycopg.DataError),  # jsonb cannot hold U+0000
        ({"args": {"n": 2**64}}, TypeError),  # orjson cannot encode it
    ],
    ids=["constraint", "nul", "int-range"],
)
@pytest.mark.parametrize("count", [2, 50], ids=["insert", "copy"])
async def test_a_refused_row_fails_all_of_them_with_the_same_error_either_way(
    settings, bad: dict[str, Any], error: type[Exception], count: int
):
    jobs = varied_jobs(count)
    jobs[-1] = replace(jobs[-1], **bad)
    conn = await connect(settings.database_url)
    async with conn:
        with pytest.raises(error):
            await job_store.insert_job_ids(conn, jobs)
        assert await (await conn.execute("SELECT count(*) AS n FROM jobs")).fetchone() == {"n": 0}


async def test_a_copy_into_a_batch_counts_notifies_and_announces_every_job(settings):
    batch_id = str(uuid.uuid4())
    jobs = varied_jobs(120, batch_id=batch_id)
    with psycopg.connect(settings.database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        listener.execute("LISTEN cp_jobs")
        conn = await connect(settings.database_url)
        async with conn:
            ids = await batch_store.insert_batch_with_jobs(
                conn, batch_id=batch_id, tenant_id="tenant-0", jobs=jobs, callback_url=None, request_id="r"
            )
            batch = await batch_store.get_batch(conn, batch_id, tenant_id=None)
            cur = await conn.execute("SELECT id, state FROM jobs ORDER BY id")
            states = {r["id"]: r["state"] for r in await cur.fetchall()}
            await conn.execute(
                "UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = ANY(%s)",
                (ids[:10],),
            )
            after = await batch_store.get_batch(conn, batch_id, tenant_id=None)
        notes = list(listener.notifies(timeout=1.0))
    assert batch is not None and after is not None
    scheduled = sum(1 for s in states.values() if s == "scheduled")
    assert batch.total == 120 and scheduled == 40
    assert (batch.counts["available"], batch.counts["scheduled"]) == (80, 40)
    assert after.counts["cancelled"] == 10 and after.done == 10 and after.finished_at is None
    # One `inserted` event per job, in id order, with its state; the insert's NOTIFY per queue
    # with available jobs (both queues have some).
    events = [e for n in notes if n.channel == EVENTS_CHANNEL for e in job_events(n.payload)]
    announced = [(e.job_id, e.state, e.batch_id) for e in events if e.type == "inserted"]
    assert announced == [(i, states[i], batch_id) for i in ids]
    assert sorted(n.payload for n in notes if n.channel == "cp_jobs") == ["default", "emails"]


@pytest.mark.parametrize("count", [1, COPY_THRESHOLD - 1, COPY_THRESHOLD], ids=["one", "insert", "copy"])
async def test_a_time_with_any_offset_the_api_accepts_is_stored_as_its_instant(database_url: str, count: int):
    """`scheduledAt: 2030-01-01T00:00:00+20:00` passes the API's RFC 3339 check; Postgres refuses
    offsets past 15:59 as text, so an INSERT refused it while a COPY (binary) stored it: the same
    batch got a different answer by its size. Every path now sends times in UTC. (Adversarial review.)"""
    at = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=20)))
    jobs = [replace(job, scheduled_at=at) for job in varied_jobs(count)]
    async with await connect(database_url) as conn:
        if count == 1:
            ids = [(await job_store.insert_job(conn, jobs[0])).id]
        else:
            async with conn.transaction():
                ids = await job_store.insert_job_ids(conn, jobs)
        stored = await rows(conn, ids)
    assert [row["scheduled_at"] for row in stored] == [at] * count
    assert {row["state"] for row in stored} == {"scheduled"}


@pytest.mark.parametrize(
    "bad",
    [{"priority": 65536 + 3}, {"priority": -65536 + 1}, {"max_attempts": 2**32 + 5}],
    ids=["priority-past-int2", "priority-below-int2", "max-attempts-past-int4"],
)
@pytest.mark.parametrize("count", [2, 50], ids=["insert", "copy"])
async def test_a_number_past_its_column_type_is_refused_on_both_paths(settings, bad: dict[str, Any], count: int):
    """psycopg's binary int2/int4 dumpers wrap such a number into range (65,539 is stored as 3),
    and the row would pass every CHECK: a COPY must refuse it as the INSERT does. (Adversarial
    review; not reachable through the API, whose schemas bound both, but through any caller.)"""
    jobs = varied_jobs(count)
    jobs[-1] = replace(jobs[-1], **bad)
    conn = await connect(settings.database_url)
    async with conn:
        with pytest.raises(psycopg.DataError):
            await job_store.insert_job_ids(conn, jobs)
        cur = await conn.execute("SELECT count(*) AS n FROM jobs")
        assert await cur.fetchone() == {"n": 0}


async def _outcome(settings: Any, count: int, bad: dict[str, Any]) -> tuple[Any, ...]:
    jobs = varied_jobs(count)
    jobs[-1] = replace(jobs[-1], **{"priority": 1, "max_attempts": 2, "tags": [], **bad})
    conn = await connect(settings.database_url)
    async with conn:
        try:
            ids = await job_store.insert_job_ids(conn, jobs)
        except psycopg.Error as exc:
            await conn.rollback()
            return ("refused", type(exc).__name__)
        cur = await conn.execute("SELECT priority, max_attempts, tags FROM jobs WHERE id = %s", (ids[-1],))
        row = await cur.fetchone()
        await conn.rollback()
        assert row is not None
        return ("stored", row["priority"], row["max_attempts"], row["tags"])


@pytest.mark.parametrize(
    "bad",
    [{"priority": True}, {"max_attempts": True}, {"priority": 3.0}, {"tags": ["a", 5]}],
    ids=["priority-bool", "max-attempts-bool", "priority-float", "tag-int"],
)
async def test_a_value_of_another_type_has_the_same_outcome_on_both_paths(settings: Any, bad: dict[str, Any]):
    """The COPY stored True as priority 1 where the INSERT refuses a boolean, and raised a
    TypeError (not a database error) for a float or a non-text tag. (Adversarial review.)"""
    assert await _outcome(settings, 2, bad) == await _outcome(settings, 50, bad)


async def test_json_that_text_arrays_would_quote_is_stored_as_a_single_insert_stores_it(settings):
    """insert_jobs sends args, meta and tags as binary jsonb arrays (no array quoting or escaping
    in Python): values full of what a text array literal escapes are stored as insert_job (one
    row, plain jsonb parameters) stores them."""
    tricky = ['"', "\\", '\\"', "{", "}", ",", "NULL", "null", " ", "", "é\u2028", '{"a": [1, "}"]}']
    jobs = [
        NewJob(
            queue="default",
            worker="echo",
            tenant_id="t",
            args={"s": text, "list": [text, {text: text}], "n": 1.5},
            meta={text: [text]} if text else {"empty": ""},
            tags=[text, "x"],
        )
        for text in tricky
    ]
    conn = await connect(settings.database_url)
    async with conn:
        batched = await job_store.insert_jobs(conn, jobs)
        singles = [await job_store.insert_job(conn, job) for job in jobs]
    assert [(j.args, j.meta, j.tags) for j in batched] == [(j.args, j.meta, j.tags) for j in singles]
    assert [(j.args, j.meta, j.tags) for j in batched] == [(j.args, j.meta, j.tags) for j in jobs]
