"""The event hub's shutdown (from a review of its bounded stop): with its listener stuck in a step on
the server, stop or a cancel ends it, its subscribers and its tasks, and leaves no query running;
a bug in the listener still comes out of run(); a stop set before run() starts ends it at once."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from functions.ingress import event_hub
from functions.ingress.event_hub import EventFilter, EventHub
from shared.db.pool import Pool
from tests.conftest import make_settings


async def _sleepers(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        cur = await c.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3600)%'")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def _stuck(entered: asyncio.Event) -> Any:
    async def stuck(conn: Any, channel: str) -> None:
        entered.set()
        await conn.execute("SELECT pg_sleep(3600)")

    return stuck


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_stop_or_a_cancel_ends_a_hub_stuck_on_the_server_and_everything_it_started(
    database_url: str, pool: Pool, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    entered = asyncio.Event()
    monkeypatch.setattr(event_hub, "listen", _stuck(entered))
    hub = EventHub(make_settings(database_url), pool)
    stop = asyncio.Event()
    before = set(asyncio.all_tasks())
    task = asyncio.create_task(hub.run(stop))
    sub = hub.subscribe(EventFilter(tenant_id="acme"), None).subscriber
    async with asyncio.timeout(30):
        await entered.wait()
    await asyncio.sleep(0.3)
    if how == "stop":
        stop.set()
    else:
        task.cancel()
    async with asyncio.timeout(10):
        try:
            await task
        except asyncio.CancelledError:
            assert how == "cancel"
    assert sub.gone.is_set() and hub.subscriber_count == 0
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == [], left
    await asyncio.sleep(0.5)
    assert await _sleepers(database_url) == 0


async def test_a_bug_in_the_listener_comes_out_of_run_and_ends_the_streams(
    database_url: str, pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def buggy(conn: Any, channel: str) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(event_hub, "listen", buggy)
    hub = EventHub(make_settings(database_url), pool)
    before = set(asyncio.all_tasks())
    task = asyncio.create_task(hub.run(asyncio.Event()))
    sub = hub.subscribe(EventFilter(tenant_id="acme"), None).subscriber
    async with asyncio.timeout(10):
        with pytest.raises(RuntimeError):
            await task
    assert sub.gone.is_set()
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == [], left


async def test_a_stop_set_before_run_ends_it_at_once(database_url: str, pool: Pool) -> None:
    hub = EventHub(make_settings(database_url), pool)
    stop = asyncio.Event()
    stop.set()
    before = set(asyncio.all_tasks())
    async with asyncio.timeout(3):
        await hub.run(stop)
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    assert left == [], left
