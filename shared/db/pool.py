"""Connection pools for the API, the dispatcher and function machines."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


async def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 20, **kwargs: Any) -> Pool:
    """Open a pool of dict-row connections and wait until the first connection works."""
    pool: Pool = AsyncConnectionPool(
        database_url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": True, **kwargs},
        connection_class=AsyncConnection[DictRow],
        open=False,
        # A database restart kills pooled connections; check them before use so requests
        # after a restart get a fresh one instead of an error.
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=3600,
    )
    await pool.open(wait=True, timeout=30)
    return pool


async def connect(database_url: str) -> AsyncConnection[DictRow]:
    """One autocommit dict-row connection (LISTEN, advisory locks, tests)."""
    return await AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row)
