"""The triggers of migrations/0006 and 0012: every insert and state change is logged, and sent on
`cp_events` by `job_events_flush` (never by the writer's own transaction), named for what
happened, in notifications that stay under Postgres' 8000-byte payload limit whatever the rows
hold, each exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from shared.notify import EVENTS_CHANNEL, JobEventNote, job_events
from shared.vocabulary import JobEvent

NOTIFY_LIMIT = 8000


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        yield conn


def flush(conn: psycopg.Connection) -> int:
    """What an API process's event hub does every few milliseconds."""
    sent = 0
    while (batch := conn.execute("SELECT job_events_flush(5000)").fetchone()[0]) > 0:  # type: ignore[index]
        sent += batch
    return sent


def received(conn: psycopg.Connection, *, flushed: bool = True) -> tuple[list[JobEventNote], list[int]]:
    """Every event notified so far (after a flush, unless `flushed` is False), and each
    notification's payload size in bytes."""
    if flushed:
        flush(conn)  # a session receives its own notifications
    events, sizes = [], []
    for note in conn.notifies(timeout=0.5):
        sizes.append(len(note.payload.encode()))
        events += job_events(note.payload)
    return events, sizes


def test_ten_thousand_jobs_with_the_longest_values_stay_under_the_payload_limit(
    database_url: str, listener: psycopg.Connection
) -> None:
    # Control characters take 6 bytes each once JSON-escaped: the worst case for every text.
    tenant, queue, batch = "\x01" * 128, "\x02" * 64, "\x03" * 5000
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, batch_id, tags)"
            " SELECT %s, 'echo', %s, %s, array[repeat('t', 5000)] FROM generate_series(1, 10000)",
            (queue, tenant, batch),
        )
    inserted, sizes = received(listener)
    assert len(inserted) == 10_000 and max(sizes) < NOTIFY_LIMIT
    assert {(e.type, e.tenant_id, e.queue, e.batch_id) for e in inserted} == {("inserted", tenant, queue, batch[:100])}
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now()")
    cancelled, sizes = received(listener)
    assert len(cancelled) == 10_000 and max(sizes) < NOTIFY_LIMIT
    assert {e.job_id for e in cancelled} == {e.job_id for e in inserted}
    assert {e.type for e in cancelled} == {"cancelled"}
    # Event ids are unique across all of them.
    assert len({e.event_id for e in inserted + cancelled}) == 20_000


def test_events_name_what_happened(database_url: str, listener: psycopg.Connection) -> None:
    def run(sql: str) -> list[str]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql)
        types = [e.type for e in received(listener)[0]]
        assert set(types) <= set(JobEvent), types  # the names the API documents
        return types

    claim = (
        "UPDATE jobs SET state = 'executing', attempt = attempt + 1, attempted_by = 'm',"
        " attempted_at = now(), heartbeat_at = now()"
    )
    assert run("INSERT INTO jobs (queue, worker, tenant_id) VALUES ('default', 'echo', 't')") == ["inserted"]
    assert run(claim) == ["executing"]
    assert run("UPDATE jobs SET heartbeat_at = now()") == []  # no state change, no event
    assert run("UPDATE jobs SET state = 'scheduled', scheduled_at = now() + interval '1 hour'") == ["snoozed"]
    assert run("UPDATE jobs SET state = 'available'") == ["available"]
    assert run(claim) == ["executing"]
    assert run("UPDATE jobs SET state = 'available'") == ["handed_back"]
    assert run(claim) == ["executing"]
    rescued = (
        "UPDATE jobs SET state = 'retryable', errors = errors || "
        """'[{"attempt": 2, "kind": "rescued", "error": "rescued by the lifeline"}]'"""
    )
    assert run(rescued) == ["rescued"]
    assert run("UPDATE jobs SET state = 'cancelled', cancelled_at = now()") == ["cancelled"]
    assert run("UPDATE jobs SET state = 'available', cancelled_at = NULL") == ["retried"]
    assert run(claim) == ["executing"]
    failed = """UPDATE jobs SET state = 'discarded', discarded_at = now(), errors = errors || '[{"kind": "error"}]'"""
    assert run(failed) == ["discarded"]


def test_writers_notify_nothing_themselves_and_a_flush_sends_each_event_once(
    database_url: str, listener: psycopg.Connection
) -> None:
    # A NOTIFY in a claim or completion would take Postgres' commit-wide notify lock: none may.
    # (An insert notifies at its commit, as it notifies cp_jobs anyway.)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO jobs (queue, worker, tenant_id) VALUES ('default', 'echo', 't')")
        assert [e.type for e in received(listener, flushed=False)[0]] == ["inserted"]
        conn.execute("UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now()")
        conn.execute("UPDATE jobs SET state = 'completed', completed_at = now()")
    assert received(listener, flushed=False) == ([], [])
    events, _ = received(listener)
    assert [e.type for e in events] == ["executing", "completed"]
    assert received(listener) == ([], [])  # sent once: the flush took them from the log


def test_an_event_is_sent_once_its_transaction_commits_and_never_if_it_rolls_back(
    database_url: str, listener: psycopg.Connection
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id) SELECT 'default', 'echo', 't' FROM generate_series(1, 2)"
        )
    assert [e.type for e in received(listener)[0]] == ["inserted", "inserted"]
    with psycopg.connect(database_url) as open_tx, psycopg.connect(database_url) as doomed:
        open_tx.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = 1")
        doomed.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = 2")
        assert received(listener) == ([], [])  # not committed yet: nothing sent, nothing lost
        doomed.rollback()
        open_tx.commit()
    assert [(e.type, e.job_id) for e in received(listener)[0]] == [("cancelled", 1)]


def test_one_flush_at_a_time_and_a_jobs_events_keep_their_order(
    database_url: str, listener: psycopg.Connection
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id) SELECT 'default', 'echo', 't' FROM generate_series(1, 3)"
        )
        conn.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now()")
        with psycopg.connect(database_url) as other:
            assert other.execute("SELECT job_events_flush(5000)").fetchone() == (3,)
            # While that flush is uncommitted, another sends nothing (rather than overtaking it).
            assert conn.execute("SELECT job_events_flush(5000)").fetchone() == (0,)
            other.commit()
        conn.execute("UPDATE jobs SET state = 'available', cancelled_at = NULL")
        flush(conn)
        conn.execute("UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now()")
        flush(conn)
        conn.execute("UPDATE jobs SET state = 'completed', completed_at = now()")
        flush(conn)
    events, _ = received(listener)
    assert len({e.event_id for e in events}) == len(events) == 15
    for job_id in {e.job_id for e in events}:
        assert [e.type for e in events if e.job_id == job_id] == [
            "inserted",
            "cancelled",
            "retried",
            "executing",
            "completed",
        ]


def test_a_progress_event_carries_its_progress_within_the_payload_limit(
    database_url: str, listener: psycopg.Connection
) -> None:
    # 0016: the progress travels in the event (listeners no longer read it from a row that may have
    # moved on), unless it is too long to keep every notification under the payload limit.
    small = '{"done": 2, "total": 4, "message": "' + "\\u0001" * 150 + '"}'  # 900 bytes once escaped
    big = '{"done": 3, "total": 4, "message": "' + "x" * 2000 + '"}'
    with psycopg.connect(database_url, autocommit=True) as conn:
        (job_id,) = conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id) VALUES ('default', 'echo', 'acme') RETURNING id"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm-1', attempted_at = now(),"
            " heartbeat_at = now() WHERE id = %s",
            (job_id,),
        )
        for progress in (small, big) * 40:  # many in one flush: several notifications
            conn.execute("UPDATE jobs SET progress = %s::jsonb WHERE id = %s", (progress, job_id))
    events, sizes = received(listener)
    carried = [e.progress for e in events if e.type == JobEvent.PROGRESS]
    assert carried == [{"done": 2, "total": 4, "message": "\x01" * 150}, None] * 40  # None: read from the row
    assert max(sizes) < NOTIFY_LIMIT


def test_an_event_of_another_shape_is_read_without_what_it_cannot_carry() -> None:
    base = [7, "progress", 1, "executing", "default", "acme", 1, None]
    assert job_events(json.dumps([base]))[0].progress is None
    assert job_events(json.dumps([[*base, {"done": 1}]]))[0].progress == {"done": 1}
    assert job_events(json.dumps([[*base, "not an object"]]))[0].progress is None
    assert job_events(json.dumps([[*base, None, "extra"]])) == []
    failed = [7, "retryable", 1, "retryable", "default", "acme", 1, None]
    assert [job_events(json.dumps([[*failed, n]]))[0].error_number for n in (3, 0, -1, True, 2.5)] == [
        3,
        None,
        None,
        None,
        None,
    ]
