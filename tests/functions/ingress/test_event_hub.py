"""The hub's Python API, as other routes (the dashboard) use it: filters in, an async iterator of
events out, a bounded queue per subscriber."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from functions.ingress import event_hub
from functions.ingress.event_hub import EventFilter, EventHub, LiveEvent, Reset
from functions.ingress.events import final_job_stream, wait_for_final
from shared.db import event_log
from shared.db.pool import Pool, open_pool
from shared.errors import RateLimited, ServiceUnavailable
from shared.settings import Settings
from tests.conftest import make_settings


@contextlib.asynccontextmanager
async def running_hub(settings: Settings, pool: Pool) -> AsyncIterator[EventHub]:
    hub = EventHub(settings, pool)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        async with asyncio.timeout(30):
            while not hub.connected:
                await asyncio.sleep(0.05)
        yield hub
    finally:
        stop.set()
        await task


async def replayed_after(hub: EventHub, first: LiveEvent, *, before: int, count: int) -> list[LiveEvent | Reset]:
    """Once the hub has received `count` events since `before` (its received_total then), the
    events a client resuming right after `first` (Last-Event-ID) is sent."""
    async with asyncio.timeout(30):
        while hub.received_total < before + count:
            await asyncio.sleep(0.01)
    async with hub.subscription(EventFilter(tenant_id=first.note.tenant_id), str(first.note.event_id)) as events:
        async with asyncio.timeout(30):
            return [await anext(aiter(events)) for _ in range(count)]


async def insert(pool: Pool, tenant: str, count: int = 1) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id) SELECT 'default', 'echo', %s FROM generate_series(1, %s)",
            (tenant, count),
        )


async def test_a_subscription_yields_the_events_its_filter_wants(database_url: str, pool: Pool) -> None:
    async with running_hub(make_settings(database_url), pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme", queues=frozenset({"default"}))) as events:
            await insert(pool, "someone-else")
            await insert(pool, "acme")
            async with asyncio.timeout(30):
                event = await anext(aiter(events))
        assert isinstance(event, LiveEvent)
        assert (event.note.tenant_id, event.note.type, event.json()["queue"]) == ("acme", "inserted", "default")
        assert hub.subscriber_count == 0  # the block's end unsubscribed it


async def test_a_subscriber_that_does_not_consume_is_dropped_at_its_bound(database_url: str, pool: Pool) -> None:
    settings = make_settings(database_url, events_client_buffer=10, events_max_subscribers=1)
    async with running_hub(settings, pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events:
            with pytest.raises(ServiceUnavailable):
                hub.subscribe(EventFilter(tenant_id="acme"))  # EVENTS_MAX_SUBSCRIBERS
            await insert(pool, "acme", 50)
            async with asyncio.timeout(30):
                while hub.dropped_total == 0:
                    await asyncio.sleep(0.05)
            # What waited for it was let go; its iterator ends instead of growing.
            assert events.subscriber.queue.qsize() <= 1
            received = [item async for item in events]
        assert received == []
        assert hub.subscriber_count == 0


async def test_one_tenant_cannot_take_every_slot(database_url: str, pool: Pool) -> None:
    settings = make_settings(database_url, events_max_subscribers_per_tenant=2)
    async with running_hub(settings, pool) as hub:
        first = hub.subscribe(EventFilter(tenant_id="greedy"))
        hub.subscribe(EventFilter(tenant_id="greedy", job_id=1))
        with pytest.raises(RateLimited):
            hub.subscribe(EventFilter(tenant_id="greedy"))
        hub.subscribe(EventFilter(tenant_id="modest"))  # another tenant still gets in
        hub.unsubscribe(first.subscriber)
        hub.subscribe(EventFilter(tenant_id="greedy"))  # a freed slot is usable again


async def test_closing_ends_every_stream_and_refuses_new_ones(database_url: str, pool: Pool) -> None:
    async with running_hub(make_settings(database_url), pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events:
            hub.close_streams()  # the server was told to stop
            async with asyncio.timeout(30):
                received = [item async for item in events]
            assert received == [] and events.subscriber.gone.is_set()
            with pytest.raises(ServiceUnavailable):
                hub.subscribe(EventFilter(tenant_id="acme"))
        assert hub.subscriber_count == 0


async def test_a_stopping_instance_still_answers_where_a_job_stands(database_url: str, pool: Pool) -> None:
    """After the stop signal (before uvicorn stops reading requests): a ?wait answers at once with
    the state as it is, and a final job's event stream is its one frame. (Adversarial review: both
    were 503.)"""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id) VALUES ('default', 'echo', 'acme') RETURNING id"
        )
        row = await cursor.fetchone()
    assert row is not None
    job_id = row["id"]
    async with running_hub(make_settings(database_url), pool) as hub:
        hub.close_streams()
        job = await wait_for_final(hub, pool, job_id, "acme", 30)
        assert job is not None and job.state.value == "available"
        with pytest.raises(ServiceUnavailable):
            await final_job_stream(pool, job_id, "acme")  # not final: nothing to say but "reconnect"
        async with pool.connection() as conn:
            await conn.execute("UPDATE jobs SET state = 'cancelled', cancelled_at = now() WHERE id = %s", (job_id,))
        response = await final_job_stream(pool, job_id, "acme")
        frames = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[misc]
        assert b'"state":"cancelled"' in frames
        assert hub.subscriber_count == 0


async def test_stop_ends_the_hub_even_while_its_listener_is_stuck(
    database_url: str, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listener sees `stop` between its steps; one that never ends (here its LISTEN; a CI run
    # once waited 180 s for the hub to stop) must not hold the app's shutdown.
    entered = asyncio.Event()

    async def stuck(conn: Any, channel: str) -> None:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(event_hub, "listen", stuck)
    hub = EventHub(make_settings(database_url), pool)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    async with asyncio.timeout(30):
        await entered.wait()
    stop.set()
    async with asyncio.timeout(10):
        await task


@pytest.mark.parametrize("last_event_id", ["²", "١٢", "12x", "9" * 21, "", "-1"])
async def test_an_unusable_last_event_id_resets_and_leaves_nothing_behind(
    database_url: str, pool: Pool, last_event_id: str
) -> None:
    # "²" and "١٢" are digits to str.isdigit() but not to int(): such an id once failed the
    # request after its subscription was registered, leaking one of the tenant's stream slots.
    settings = make_settings(database_url, events_max_subscribers_per_tenant=1)
    async with running_hub(settings, pool) as hub:
        for _ in range(3):
            subscription = hub.subscribe(EventFilter(tenant_id="acme"), last_event_id)
            assert subscription.gap and subscription.replay == []
            hub.unsubscribe(subscription.subscriber)
        assert hub.subscriber_count == 0


async def test_events_flow_while_every_connection_of_the_request_pool_is_busy(database_url: str) -> None:
    # Slow requests or row locks can hold the whole request pool; the hub sends events on a
    # connection of its own.
    settings = make_settings(database_url)
    busy_pool = await open_pool(database_url, min_size=1, max_size=1)
    async with busy_pool, running_hub(settings, busy_pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events, busy_pool.connection():
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as writer:
                await writer.execute("INSERT INTO jobs (queue, worker, tenant_id) VALUES ('default', 'echo', 'acme')")
                await writer.execute(
                    "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now()"
                )
            async with asyncio.timeout(10):
                got = [await anext(aiter(events)) for _ in range(2)]
    assert [e.note.type for e in got if isinstance(e, LiveEvent)] == ["inserted", "executing"]


async def test_a_flush_that_raises_something_unexpected_does_not_stop_the_events(
    database_url: str, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the hub flushes every few milliseconds: if any error ended its flush task, live events
    # would fall back to the leader's once-a-second flush without a word.
    real = event_log.flush
    failures = [RuntimeError("a bug"), ValueError("another")]

    async def flaky(conn: Any, *, max_events: int) -> int:
        if failures:
            raise failures.pop()
        return await real(conn, max_events=max_events)

    monkeypatch.setattr(event_log, "flush", flaky)
    async with running_hub(make_settings(database_url), pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events:
            await insert(pool, "acme")
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now()"
                )
            async with asyncio.timeout(10):
                got = [await anext(aiter(events)) for _ in range(2)]
    assert not failures
    assert [e.note.type for e in got if isinstance(e, LiveEvent)] == ["inserted", "executing"]


async def test_iterating_a_subscription_again_goes_on_where_it_was(database_url: str, pool: Pool) -> None:
    # Each aiter() started a new generator: what the first had taken from the queue in one batch
    # and not yet yielded was lost with it (two events read one at a time hung on the second
    # whenever both came in one batch: a CI failure of this file under load).
    async with running_hub(make_settings(database_url), pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events:
            await insert(pool, "acme")
            await insert(pool, "acme")
            queue = events.subscriber.queue
            async with asyncio.timeout(10):
                while queue.qsize() < 2:  # both waiting: the first read takes them in one batch
                    await asyncio.sleep(0.01)
                got = [await anext(aiter(events)) for _ in range(2)]
    assert [e.note.type for e in got if isinstance(e, LiveEvent)] == ["inserted", "inserted"]
    assert got[0].note.job_id != got[1].note.job_id  # type: ignore[union-attr]


async def test_a_replayed_event_keeps_its_own_progress_and_error_after_the_job_moved_on(
    database_url: str, pool: Pool
) -> None:
    # The hub read a progress event's progress and a failure's error from the row when it sent the
    # event; an event replayed after Last-Event-ID (or read late) showed what the row held by then:
    # the next attempt's progress (or none: a claim clears it) and the next attempt's error.
    async def sql(statement: str, *params: Any) -> None:
        async with pool.connection() as conn:
            await conn.execute(statement, params)

    async def one_attempt(job_id: int, attempt: int, done: int, error: str) -> None:
        await sql("UPDATE jobs SET state = 'available' WHERE id = %s AND state <> 'available'", job_id)
        await sql(
            "UPDATE jobs SET state = 'executing', attempt = %s, attempted_by = 'm-1', attempted_at = now(),"
            " heartbeat_at = now() WHERE id = %s",
            attempt,
            job_id,
        )
        await sql("UPDATE jobs SET progress = %s::jsonb WHERE id = %s", f'{{"done": {done}, "total": 4}}', job_id)
        entry = f'[{{"attempt": {attempt}, "kind": "error", "error": "{error}"}}]'
        await sql(
            "UPDATE jobs SET state = 'retryable', scheduled_at = now() + interval '1 hour', heartbeat_at = NULL,"
            " errors = errors || %s::jsonb WHERE id = %s",
            entry,
            job_id,
        )

    async with running_hub(make_settings(database_url), pool) as hub:
        async with hub.subscription(EventFilter(tenant_id="acme")) as events:
            await insert(pool, "acme")
            async with asyncio.timeout(30):
                inserted = await anext(aiter(events))
        assert isinstance(inserted, LiveEvent)
        job_id = inserted.note.job_id
        before = hub.received_total
        await one_attempt(job_id, 1, done=1, error="first")
        await one_attempt(job_id, 2, done=3, error="second")
        # executing, progress, retryable; then available (staged) and the same again
        replayed = await replayed_after(hub, inserted, before=before, count=7)
    sent = [e.json() for e in replayed if isinstance(e, LiveEvent)]
    assert [(e["type"], e["attempt"], e["progress"]) for e in sent if e["type"] == "progress"] == [
        ("progress", 1, {"done": 1, "total": 4}),
        ("progress", 2, {"done": 3, "total": 4}),
    ]
    assert [(e["attempt"], (e["error"] or {}).get("error")) for e in sent if e["type"] == "retryable"] == [
        (1, "first"),
        (2, "second"),
    ]
