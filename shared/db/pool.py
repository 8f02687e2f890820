"""Connection pools for the API, the dispatcher and function machines."""

from __future__ import annotations

import time
import weakref
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_dumps
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

# jsonb parameters (job args, results) are serialised with orjson: several times faster than json.
set_json_dumps(orjson.dumps)

# A database restart kills pooled connections, so a connection is checked before use -- but only
# one that sat unused for a while: a busy pool would otherwise pay a round trip per checkout.
_PING_IF_IDLE_SECONDS = 2.0
_returned_at: weakref.WeakKeyDictionary[AsyncConnection[Any], float] = weakref.WeakKeyDictionary()


async def _note_return(conn: AsyncConnection[Any]) -> None:
    _returned_at[conn] = time.monotonic()


async def _ping_if_idle(conn: AsyncConnection[Any]) -> None:
    """Raises if a connection idle for more than a moment is dead; the pool then replaces it."""
    if time.monotonic() - _returned_at.get(conn, 0.0) > _PING_IF_IDLE_SECONDS:
        await AsyncConnectionPool.check_connection(conn)


async def utc_session(conn: AsyncConnection[Any]) -> None:
    """Read and write times in UTC, whatever the database's or role's TimeZone. The API keeps
    times within years 1-9999 in UTC (and the jobs table a CHECK to match); read in another zone,
    such a time can fall in year 10000, which Python cannot hold, and every read of its row fails.
    A SET after connecting, not startup `options`, which some poolers refuse."""
    await conn.execute("SET TimeZone TO 'UTC'")


async def open_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 20, checkout_timeout: float = 30.0, **kwargs: Any
) -> Pool:
    """Open a pool of dict-row connections and wait until the first connection works.

    `checkout_timeout`: how long `pool.connection()` waits for a connection before PoolTimeout.
    """
    pool: Pool = AsyncConnectionPool(
        database_url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True, **kwargs},
        connection_class=AsyncConnection[DictRow],
        open=False,
        configure=utc_session,
        check=_ping_if_idle,
        reset=_note_return,
        reconnect_timeout=3600,
        timeout=checkout_timeout,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def connect(database_url: str) -> AsyncConnection[DictRow]:
    """One autocommit dict-row connection (LISTEN, advisory locks, tests), in UTC."""
    conn = await AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row)
    await utc_session(conn)
    return conn
