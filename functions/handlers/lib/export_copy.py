"""Read `COPY ... TO STDOUT` output in blocks from a worker thread with its own connection.

psycopg's async COPY awaits once per row and costs about twice the CPU per row of its blocking
twin; on a two-core machine shared with Postgres that alone halves an export's throughput. So
the COPY runs on a blocking connection in a thread, which hands blocks of about 1 MiB to the
event loop. A few blocks at most wait between the two (a semaphore), so memory stays flat
however slowly the consumer uploads.

The server sends COPY output one row per message (the header line is a message of its own), so
the thread counts rows for progress reports as it goes, for free: scanning the blocks for row ends
afterwards (quotes and all) cost the event loop about as much CPU as the whole upload.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any, Final

import psycopg
from psycopg import sql

from shared.db.sql import QUERIES

BLOCK_BYTES: Final = 1024 * 1024
WAITING_BLOCKS: Final = 4  # blocks read ahead of the consumer
_POLL_SECONDS: Final = 0.2  # how often a thread held back by the consumer looks for a stop


class _Stopped(Exception):
    """The consumer went away; the thread unwinds (rolling back its transaction)."""


class CopyReader:
    """`async with CopyReader(...) as reader: async for block in reader.blocks(): ...`

    The COPY runs in one read-only transaction, in UTC. Leaving the block early (an error or a
    cancellation) cancels the statement on the server and waits for the thread to end.
    """

    def __init__(
        self,
        conninfo: str,
        statement: sql.Composed | sql.SQL,
        params: Mapping[str, Any],
        *,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.conninfo = conninfo
        self.statement = statement
        self.params = params
        self.block_bytes = block_bytes
        self.rows: int | None = None  # data rows, known once every block was read
        self.lines = 0  # COPY rows (a header line included) in the blocks yielded so far
        self._loop = asyncio.get_running_loop()
        self._blocks: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue()
        self._slots = threading.Semaphore(WAITING_BLOCKS)
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: asyncio.Future[int] | None = None

    async def __aenter__(self) -> CopyReader:
        self._thread = asyncio.ensure_future(asyncio.to_thread(self._run))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread is not None and not self._thread.done():
            await self._halt()

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        """The COPY output in order. Raises whatever the COPY raised (after the last good block)."""
        if self._thread is None:
            raise RuntimeError("use CopyReader in `async with`")
        while (item := await self._blocks.get()) is not None:
            self._slots.release()
            block, lines = item
            self.lines += lines
            yield block
        self.rows = await self._thread

    async def _halt(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        conn = self._conn  # read after setting the stop: see _run for why one side always notices
        if conn is not None:
            await asyncio.to_thread(conn.cancel_safe)
        await asyncio.wait([self._thread])
        if not self._thread.cancelled():
            self._thread.exception()  # retrieved on purpose: the consumer's own error is the one to report

    # --- in the worker thread ----------------------------------------------------------------

    def _run(self) -> int:
        try:
            with psycopg.connect(self.conninfo) as conn:
                self._conn = conn
                # Set before this check, read after the stop is set: either this thread sees the
                # stop here, or _halt sees the connection and cancels the COPY on the server.
                if self._stop.is_set():
                    raise _Stopped
                with conn.transaction():
                    conn.execute(QUERIES["read_only_snapshot"])
                    conn.execute(QUERIES["utc_session_time_zone"])
                    with conn.cursor() as cur:
                        self._copy(cur)
                        return cur.rowcount  # from the "COPY n" command tag
        finally:
            self._loop.call_soon_threadsafe(self._blocks.put_nowait, None)

    def _copy(self, cur: psycopg.Cursor[Any]) -> None:
        with cur.copy(self.statement, self.params) as copy:
            block, lines = bytearray(), 0
            for data in copy:  # one row each
                block += data
                lines += 1
                if len(block) >= self.block_bytes:
                    self._hand_over(bytes(block), lines)
                    block.clear()
                    lines = 0
            if block:
                self._hand_over(bytes(block), lines)

    def _hand_over(self, block: bytes, lines: int) -> None:
        while not self._slots.acquire(timeout=_POLL_SECONDS):
            if self._stop.is_set():
                raise _Stopped
        if self._stop.is_set():
            raise _Stopped
        self._loop.call_soon_threadsafe(self._blocks.put_nowait, (block, lines))
