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
Should a job the database (or the JSON encoder) refuses get through anyway, its batch's statement
fails; the batch is then inserted again one job at a time, so only that job's request fails, with
a 422 (`as_refusal`), and its batch-mates get their rows. A database that cannot be reached
(OperationalError: down, restarting, pool exhausted) fails every request of the batch at once,
each answering 503 exactly as a single insert would: retrying one by one could not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final

import orjson
import psycopg
from psycopg.errors import UniqueViolation

from shared.db import job_store
from shared.db.models import Job, NewJob
from shared.db.pool import Pool
from shared.errors import ValidationFailed

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
        self.split = 0  # failed statements whose jobs were then inserted one by one
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
            if isinstance(exc, psycopg.OperationalError):
                self._fail(batch, exc)
            elif len(batch) == 1:
                job = batch[0][0]
                self._fail(batch, as_refusal(exc, job.args, job.meta))
            else:
                await self._one_by_one(batch)
            return
        self._resolve(batch, rows)

    async def _one_by_one(self, batch: list[_Item]) -> None:
        """Insert each job of a failed batch alone: only the jobs the database refuses fail."""
        self.split += 1
        pending = list(batch)
        try:
            async with self.pool.connection() as conn:
                while pending:
                    item = pending[0]
                    job, future = item
                    if not future.done():  # a request that gave up needs no row
                        try:
                            rows = await job_store.insert_jobs(conn, [job])
                        except psycopg.OperationalError:
                            raise  # the database went away: the rest fail with it below
                        except Exception as exc:
                            self._fail([item], as_refusal(exc, job.args, job.meta))
                        else:
                            if len(rows) == 1:
                                self._resolve([item], rows)
                            else:
                                self._fail([item], RuntimeError(f"insert returned {len(rows)} rows for 1 job"))
                    pending.pop(0)
        except BaseException as exc:
            self._fail(pending, exc if isinstance(exc, Exception) else RuntimeError("the batch inserter was cancelled"))
            if not isinstance(exc, Exception):
                raise

    def _resolve(self, batch: list[_Item], rows: list[Job]) -> None:
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


class JobNotStorable(ValidationFailed):
    """The database or the JSON encoder refused a job's data although it passed validation."""


def as_refusal(exc: Exception, *values: Any) -> Exception:
    """`exc` as a 422 when it says the job's own data cannot be stored; otherwise `exc` unchanged.

    Refused data: the row broke a column's type or range (DataError) or a constraint
    (IntegrityError), or one of `values` (the job's JSON: args, meta) does not encode. Anything
    else (the database is unreachable, a bug) keeps its own answer, 503 or 500.
    """
    if isinstance(exc, JobNotStorable):
        return exc
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError) and not isinstance(exc, UniqueViolation):
        # (A unique violation is a race between requests, not this job's data.)
        reason = "the database refused it"
    elif isinstance(exc, TypeError | ValueError) and not all(_encodes(value) for value in values):
        # orjson.JSONEncodeError is TypeError itself: the encoder, asked again, says it was this job's data.
        reason = "a value cannot be encoded as JSON"
    else:
        return exc
    logger.warning("a job's data was refused after validation", extra={"error": type(exc).__name__})
    refusal = JobNotStorable("the job's data cannot be stored", errors=[{"path": "", "message": reason}])
    refusal.__cause__ = exc
    return refusal


@contextlib.contextmanager
def refusals_answered(*values: Any) -> Iterator[None]:
    """Raise what `as_refusal` makes of an exception of the block; `values` as for it."""
    try:
        yield
    except Exception as exc:
        refusal = as_refusal(exc, *values)
        if refusal is exc:
            raise
        raise refusal from exc


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True
