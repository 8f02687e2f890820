"""Read `COPY ... TO STDOUT` output in blocks from a worker thread with its own connection.

psycopg's async COPY awaits once per row and costs about twice the CPU per row of its blocking
twin; on a two-core machine shared with Postgres that alone halves an export's throughput. So
the COPY runs on a blocking connection in a thread, which hands blocks of about 1 MiB to the
event loop. The thread reads rows straight from libpq (`_Libpq`): psycopg's blocking
Copy.read() still costs about as much again per row as the reading itself. A few blocks at
most wait between the thread and the event loop (a semaphore), so memory stays flat however
slowly the consumer uploads.

The server sends COPY output one row per message (the header line is a message of its own), so
the thread counts rows for progress reports as it goes, for free: scanning the blocks for row ends
afterwards (quotes and all) cost the event loop about as much CPU as the whole upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import selectors
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any, Final

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGresult

from shared.db.sql import QUERIES

BLOCK_BYTES: Final = 1024 * 1024
WAITING_BLOCKS: Final = 4  # blocks read ahead of the consumer
_POLL_SECONDS: Final = 0.2  # how often a thread held back by the consumer looks for a stop
_CONNECT_SECONDS: Final = 10
# A stop must not wait on a server that does not answer (a partition: no reset, no reply). A
# cancel request goes over a connection of its own, bounded here (psycopg's default is 30 s);
# once stopped, a server silent this long is given up: the connection is closed, not rolled back.
_CANCEL_SECONDS: Final = 2.0
_SILENT_AFTER_STOP_SECONDS: Final = 5.0

logger = logging.getLogger(__name__)

# One consistent snapshot, nothing written, timestamps in UTC whatever the database's TimeZone.
_SETUP: Final = b"".join(
    (b"BEGIN; ", QUERIES["read_only_snapshot"].encode(), b" ", QUERIES["utc_session_time_zone"].encode(), b" ")
)


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
            with contextlib.suppress(psycopg.Error):  # unreachable: the thread gives the server up
                await asyncio.to_thread(conn.cancel_safe, timeout=_CANCEL_SECONDS)
        await asyncio.wait([self._thread])
        if not self._thread.cancelled():
            self._thread.exception()  # retrieved on purpose: the consumer's own error is the one to report

    # --- in the worker thread ----------------------------------------------------------------

    def _run(self) -> int:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=_CONNECT_SECONDS, autocommit=True) as conn:
                self._conn = conn
                # Set before this check, read after the stop is set: either this thread sees the
                # stop here, or _halt sees the connection and cancels the COPY on the server.
                if self._stop.is_set():
                    raise _Stopped
                with _Libpq(conn, self._stop) as libpq:
                    # The transaction's set-up goes with the COPY, in one round trip through the
                    # stop-aware path: a server that goes silent before the COPY starts is given
                    # up like one that goes silent during it (psycopg's own waits have no bound).
                    rows = self._copy(libpq, _SETUP + self._query(conn))
                    libpq.command(b"COMMIT")
                    return rows
        finally:
            self._loop.call_soon_threadsafe(self._blocks.put_nowait, None)

    def _query(self, conn: psycopg.Connection[Any]) -> bytes:
        """The statement as sent. COPY takes no server-side parameters: like cursor.copy(), bind
        them client-side as quoted literals (and leave a statement without any untouched)."""
        if not self.params:
            return self.statement.as_bytes(conn)
        return psycopg.ClientCursor(conn).mogrify(self.statement, self.params).encode(conn.info.encoding)

    def _copy(self, libpq: _Libpq, query: bytes) -> int:
        """Run the COPY and hand its output over in blocks; returns the "COPY n" row count."""
        try:
            libpq.start_copy_out(query)
            block, lines = bytearray(), 0
            while (data := libpq.next_row()) is not None:
                block += data
                lines += 1
                if len(block) >= self.block_bytes:
                    self._hand_over(bytes(block), lines)
                    block.clear()
                    lines = 0
            if block:
                self._hand_over(bytes(block), lines)
        except BaseException:
            libpq.abandon_copy_out()
            raise
        return libpq.copy_out_rows()

    def _hand_over(self, block: bytes, lines: int) -> None:
        while not self._slots.acquire(timeout=_POLL_SECONDS):
            if self._stop.is_set():
                raise _Stopped
        if self._stop.is_set():
            raise _Stopped
        self._loop.call_soon_threadsafe(self._blocks.put_nowait, (block, lines))


class _Libpq:
    """A COPY TO STDOUT driven straight through libpq (psycopg's documented `Connection.pgconn`).

    psycopg's `Copy.read()` costs about a microsecond of Python per row (a generator and a wait
    loop for every row): for a million rows as much CPU as the rest of the export. libpq hands
    over one row per call either way; here a row costs one call, and the thread only waits on
    the socket when libpq has no whole row buffered. Use on a connection nothing else touches
    meanwhile; every result is read to the end, so psycopg finds the connection idle afterwards.
    """

    def __init__(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        self.conn = conn
        self.stop = stop
        self._cancelled = False
        self._give_up_at: float | None = None  # set once stopping: past it, the server is given up
        self.pgconn = conn.pgconn
        self.encoding = conn.info.encoding
        self._selector = selectors.DefaultSelector()
        self._event = selectors.EVENT_READ
        self._in_copy = False

    def __enter__(self) -> _Libpq:
        self._selector.register(self.pgconn.socket, self._event)
        return self

    def __exit__(self, *exc: object) -> None:
        self._selector.close()

    def start_copy_out(self, query: bytes) -> None:
        """Send `query` (a COPY ... TO STDOUT); raises the server's error if it does not start."""
        self.pgconn.send_query(query)
        while self.pgconn.flush():  # the connection is non-blocking: send the rest when writable
            self._wait(selectors.EVENT_WRITE)
        result = self._next_result()
        while result is not None and result.status == ExecStatus.COMMAND_OK:  # statements before it
            result = self._next_result()
        if result is not None and result.status == ExecStatus.COPY_OUT:
            self._in_copy = True
            return
        error = self._error(result)
        self._finish_results()
        raise error

    def command(self, query: bytes) -> None:
        """Run `query` (no rows) on the stop-aware path; raises the server's error."""
        self.pgconn.send_query(query)
        while self.pgconn.flush():
            self._wait(selectors.EVENT_WRITE)
        error: psycopg.Error | None = None
        while (result := self._next_result()) is not None:
            if result.status != ExecStatus.COMMAND_OK and error is None:
                error = self._error(result)
        if error is not None:
            raise error

    def next_row(self) -> memoryview | None:
        """The next row of the COPY output; None at its end. Raises the server's error, if any,
        once the rows before it were read."""
        while True:
            size, data = self.pgconn.get_copy_data(1)
            if size > 0:
                return data
            if size < 0:
                self._in_copy = False
                return None
            self._wait(selectors.EVENT_READ)
            self.pgconn.consume_input()

    def copy_out_rows(self) -> int:
        """After the last row: the row count of the COPY's command tag; raises its error."""
        rows: int | None = None
        error: psycopg.Error | None = None
        while (result := self._next_result()) is not None:
            if result.status == ExecStatus.COMMAND_OK and error is None:
                rows = result.command_tuples
            elif error is None:
                error = self._error(result)
        if error is not None:
            raise error
        if rows is None:
            raise psycopg.ProgrammingError("COPY ended without a row count")
        return rows

    def abandon_copy_out(self) -> None:
        """Stop a COPY part-way (the caller is going away): cancel it on the server and read what
        is left, so the connection can roll back. If that fails (the server does not answer), the
        connection is closed instead: nothing may wait on it again. Errors here are not raised
        (the caller's is)."""
        self._stopping()
        try:
            if self._in_copy:
                self._cancel()
                # Bounded even while rows keep coming: a cancel that did not get through (its
                # own connection timed out) would otherwise leave the whole COPY to read.
                while self.next_row() is not None:
                    self._check_give_up()
            self._finish_results()
        except psycopg.Error:
            logger.warning("export: the server did not stop the COPY when asked; its connection is closed instead")
            self.conn.close()

    def _stopping(self) -> None:
        if self._give_up_at is None:
            self._give_up_at = time.monotonic() + _SILENT_AFTER_STOP_SECONDS

    def _check_give_up(self) -> None:
        if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
            raise psycopg.OperationalError(
                f"the server did not stop within {_SILENT_AFTER_STOP_SECONDS:g} s of the stop; giving it up"
            )

    def _cancel(self) -> None:
        """Ask the server to cancel the running statement, once; an unreachable server is left to
        `_wait`, which gives it up."""
        if not self._cancelled:
            self._cancelled = True
            with contextlib.suppress(psycopg.Error):
                self.conn.cancel_safe(timeout=_CANCEL_SECONDS)

    def _finish_results(self) -> None:
        while self._next_result() is not None:
            pass

    def _next_result(self) -> PGresult | None:
        while self.pgconn.is_busy():
            self._wait(selectors.EVENT_READ)
            self.pgconn.consume_input()
        return self.pgconn.get_result()

    def _wait(self, event: int) -> None:
        if event != self._event:
            self._selector.modify(self.pgconn.socket, event)
            self._event = event
        # Wakes every _POLL_SECONDS to look for a stop: the reader's own cancel may have reached
        # the backend before the COPY was sent (dropped as idle), so a stop seen while waiting
        # cancels the query once more, now that the backend is running it.
        while not self._selector.select(timeout=_POLL_SECONDS):
            if not self.stop.is_set():
                continue
            self._stopping()
            self._cancel()
            self._check_give_up()

    def _error(self, result: PGresult | None) -> psycopg.Error:
        if result is None:
            return psycopg.OperationalError(self.pgconn.get_error_message(self.encoding))
        return psycopg.errors.error_from_result(result, encoding=self.encoding)
