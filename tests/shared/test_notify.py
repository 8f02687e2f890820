"""shared/notify.read_notifications: every notification, in order, and a lost connection raised."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from shared.notify import listen, read_notifications

CHANNEL = "cp_test_notes"


async def _listening(database_url: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    await listen(conn, CHANNEL)
    return conn


async def _wait_for(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_every_notification_arrives_once_and_in_order(database_url: str) -> None:
    received: list[tuple[str, str]] = []
    listener = await _listening(database_url)
    async with listener, await psycopg.AsyncConnection.connect(database_url, autocommit=True) as sender:
        # Sent after LISTEN but before anyone reads: waiting in the socket, read first.
        await sender.execute("SELECT pg_notify(%s, 'early')", (CHANNEL,))
        reading = asyncio.create_task(read_notifications(listener, lambda c, p: received.append((c, p))))
        expected = ["early"]
        for i in range(50):  # one per transaction
            await sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"one-{i}"))
            expected.append(f"one-{i}")
        async with sender.transaction():  # many in one transaction: delivered together, in order
            for i in range(50):
                await sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"many-{i}"))
                expected.append(f"many-{i}")
        await sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "отчёт ✓ " + "x" * 7000))
        expected.append("отчёт ✓ " + "x" * 7000)  # not ASCII, and longer than one read
        await _wait_for(lambda: len(received) >= len(expected))
        await asyncio.sleep(0.1)  # nothing more comes
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert received == [(CHANNEL, payload) for payload in expected]
        # Cancelled, the reader is gone: the connection is the caller's again.
        assert not asyncio.get_running_loop().remove_reader(listener.pgconn.socket)
        assert await (await listener.execute("SELECT 1")).fetchone() == (1,)


async def test_a_lost_connection_is_raised_to_the_reader(database_url: str) -> None:
    received: list[str] = []
    listener = await _listening(database_url)
    async with listener, await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        reading = asyncio.create_task(read_notifications(listener, lambda c, p: received.append(p)))
        await admin.execute("SELECT pg_notify(%s, 'before')", (CHANNEL,))
        await _wait_for(lambda: received == ["before"])
        await admin.execute("SELECT pg_terminate_backend(%s)", (listener.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            async with asyncio.timeout(10):
                await reading
