"""Group commit for plain job inserts: many concurrent requests, one INSERT and one commit.

A request that creates a plain job (no Idempotency-Key, no `options.unique`) hands its NewJob to
the process's BatchInserter and awaits its Job. One flusher task takes everything queued (up to
MAX_BATCH jobs), inserts it with one `INSERT ... unnest ... RETURNING *` on an autocommit
connection (one transaction, one WAL flush for the whole batch; the NOTIFY trigger fires per
statement, so workers still hear of it) and resolves each request's future with its row. While a
batch is being written the next one fills up, so there is no timer and no added delay: a lone
request is flushed at once, and under load each commit carries every request that arrived during
the previous one.

Validation happens before a job is queued, so one request's bad body never fails a batch-mate.
A failure of the statement itself (the database is down, ...) fails every request of that batch,
each answering 503/500 exactly as a single insert would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from shared.db import job_store
from shared.db.models import Job, NewJob
from shared.db.pool import Pool

MAX_BATCH: Final = 500

logger = logging.getLogger("functions.ingress.batch_insert")

_Item = tuple[NewJob, "asyncio.Future[Job]"]


class BatchInserter:
    """A per-process queue of plain jobs written by one flusher task, a batch per statement."""

    def __init__(self, pool: Pool, *, max_batch: int = MAX_BATCH) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.flushes = 0  # statements written (for tests and curiosity: under load, far fewer than jobs)
        self.jobs = 0
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()  # None: stop
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batch-insert")

    async def insert(self, job: NewJob) -> Job:
        """Insert `job` with whatever else is queued; its row (id, state, timestamps)."""
        if job.unique_key is not None:
            raise ValueError("unique jobs are inserted one by one (their conflict rule needs it)")
        if self._closed or self._task is None or self._task.done():
            raise RuntimeError("the batch inserter is not running")
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def close(self) -> None:
        """Write what is still queued, then stop the flusher."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        await self._queue.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_queued(RuntimeError("the batch inserter stopped"))

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Item] = []
            if first is None:
                stopping = True
            else:
                batch.append(first)
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            # A request that gave up (client gone, task cancelled) needs no row.
            batch = [item for item in batch if not item[1].done()]
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            async with self.pool.connection() as conn:
                rows = await job_store.insert_jobs(conn, [job for job, _ in batch])
            if len(rows) != len(batch):
                raise RuntimeError(f"batch insert returned {len(rows)} rows for {len(batch)} jobs")
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._fail(batch, RuntimeError("the batch inserter was cancelled"))
                raise
            logger.warning("batch insert failed", extra={"jobs": len(batch), "error": type(exc).__name__})
            self._fail(batch, exc)
            return
        self.flushes += 1
        self.jobs += len(rows)
        for (_, future), row in zip(batch, rows, strict=True):
            if not future.done():
                future.set_result(row)

    @staticmethod
    def _fail(batch: list[_Item], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(exc)
