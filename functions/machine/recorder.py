"""Recording what happened to held jobs: every write is fenced by the claim's token.

Completions go through one batcher: whatever finished while the last commit was in flight goes
into the next one (one transaction, one fsync), so a busy machine batches itself. Failures,
snoozes and hand-backs are single fenced writes. All of them are retried while the database is
away (see reach.py). An attempt that will never be recorded as completed withdraws the objects
of its claim; one whose completion may have landed (the reply was lost and the database stayed
away) keeps them: they are shown only if that completion did land.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.db import job_store, transitions
from shared.db.models import JobState
from shared.db.pool import Pool
from shared.errors import LostJobError
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

from .config import HAND_BACK_SECONDS
from .held import HeldJob
from .reach import UNREACHABLE, DatabaseReach

logger = logging.getLogger("functions.machine")

BATCH_MAX = 256
_HAND_BACK_FAILED: tuple[type[BaseException], ...] = (*UNREACHABLE, TimeoutError)
Backoff = Any  # `backoff(attempt) -> seconds`, the handler's or transitions.default_backoff_seconds


@dataclass(slots=True)
class _Completion:
    held: HeldJob
    result: dict[str, Any]
    done: asyncio.Future[bool | None]  # recorded, lost, or None: unknown (database unreachable)


class Recorder:
    def __init__(self, *, pool: Pool, machine_id: str, reach: DatabaseReach, backoff: Backoff) -> None:
        self.pool = pool
        self.machine_id = machine_id
        self.reach = reach
        self.backoff = backoff
        self._completions: asyncio.Queue[_Completion] = asyncio.Queue()

    # -- completion --------------------------------------------------------------------------

    async def complete(self, held: HeldJob, result: dict[str, Any]) -> bool | None:
        """Record `held` as completed with `result`: True when recorded, False when the claim was
        lost (its objects are withdrawn), None when it could not be known."""
        done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        # From here the handler's work is done: the heartbeat leaves this job alone (a batch may
        # already have completed it), and the fenced batch write alone says whether it was lost.
        held.completing = True
        await self._completions.put(_Completion(held=held, result=result, done=done))
        recorded = await done
        if recorded is False:
            logger.warning("job lost before completion; outputs withdrawn")
            await self.withdraw(held)
        elif recorded is None:
            logger.warning("could not record the completion (database unreachable); outcome left to the database")
        return recorded

    async def run(self) -> None:
        """The batcher: runs for the machine's life."""
        while True:
            batch = [await self._completions.get()]
            while not self._completions.empty() and len(batch) < BATCH_MAX:
                batch.append(self._completions.get_nowait())
            completed = await self._complete_batch(batch)
            for item in batch:
                if not item.done.done():  # its waiter may have been cancelled (shutdown)
                    item.done.set_result(None if completed is None else item.held.job.id in completed)

    async def _complete_batch(self, batch: list[_Completion]) -> set[int] | None:
        async def attempt() -> set[int]:
            # One statement, one round trip (no BEGIN/COMMIT of their own). A retry after a commit
            # whose reply was lost recognises its own completions.
            async with self.pool.connection() as conn:
                completed, _ = await transitions.complete_many(
                    conn,
                    done=[(c.held.fence, c.result) for c in batch],
                    progress=[c.held.ctx.reported_progress for c in batch],
                    machine_id=self.machine_id,
                )
            return completed

        return await self.reach.retrying("record completions", attempt, give_up=lambda: False)

    # -- the other outcomes --------------------------------------------------------------------

    async def fail(
        self, held: HeldJob, *, kind: str, message: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        """Record a failed attempt (retryable with backoff, or discarded); the claim's objects go."""
        held.completing = True
        try:
            if held.publishable:
                await self._fail(held, kind=kind, message=message, permanent=permanent, retry_after=retry_after)
        finally:
            await self.withdraw(held)  # the claim ends without a completion

    async def _fail(
        self, held: HeldJob, *, kind: str, message: str, permanent: bool, retry_after: float | None
    ) -> None:
        job, now = held.job, datetime.now(UTC)
        backoff = retry_after if retry_after is not None else float(self.backoff(job.attempt))
        decision = transitions.after_failure(job, permanent=permanent, backoff_seconds=backoff, now=now)
        error = transitions.error_entry(
            attempt=job.attempt, at=now, kind=kind, error=message, machine=self.machine_id, started_at=job.attempted_at
        )

        async def attempt() -> JobState:
            async with self.pool.connection() as conn, conn.transaction():
                state = await transitions.fail(conn, held.fence, decision=decision, error=error)
                await job_store.machine_ran_jobs(conn, self.machine_id, count=1)
            return state

        try:
            state = await self.reach.retrying("record the failure", attempt, give_up=lambda: held.abandoned)
        except LostJobError:
            logger.warning("job lost before its failure was recorded")
            return
        if state is not None:
            emit(EventName.JOB_ERROR, kind=kind, error=message, nextState=state.value)

    async def snooze(self, held: HeldJob, *, seconds: float) -> None:
        """Run the job again in `seconds`, giving the attempt back; the next claim stores anew."""
        held.completing = True
        try:
            if held.publishable:
                await self._fenced("record the snooze", held, "job:snooze", transitions.snooze, seconds=seconds)
        finally:
            await self.withdraw(held)

    async def hand_back(self, held: HeldJob) -> None:
        """Give the attempt back (the machine is stopping), briefly: otherwise the lifeline will."""
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                async with self.pool.connection() as conn:
                    await transitions.hand_back(conn, held.fence)
        except LostJobError:
            logger.warning("job lost before it was handed back")
        except _HAND_BACK_FAILED:
            logger.warning("could not hand the job back; the lifeline will rescue it", exc_info=True)
        else:
            emit(EventName.JOB_HANDBACK)
        finally:
            await self.withdraw(held)

    async def _fenced(self, what: str, held: HeldJob, event: str, fn: Any, **kwargs: Any) -> None:
        async def attempt() -> bool:
            async with self.pool.connection() as conn:
                await fn(conn, held.fence, **kwargs)
            return True

        try:
            done = await self.reach.retrying(what, attempt, give_up=lambda: held.abandoned)
        except LostJobError:
            logger.warning("job lost before it could %s", what)
            return
        if done:
            emit(event)

    @staticmethod
    async def withdraw(held: HeldJob) -> None:
        """Delete the objects of a claim that can never be recorded (in a thread: boto3 blocks)."""
        outputs = held.ctx.job_outputs
        if outputs is not None and outputs.reserved:
            await asyncio.to_thread(outputs.withdraw)
