"""The triggers of migrations/0006: every insert and state change is announced on `cp_events`,
named for what happened, in notifications that stay under Postgres' 8000-byte payload limit
whatever the rows hold."""

from __future__ import annotations

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


def received(conn: psycopg.Connection) -> tuple[list[JobEventNote], list[int]]:
    """Every event notified so far, and each notification's payload size in bytes."""
    events, sizes = [], []
    for note in conn.notifies(timeout=2):
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
