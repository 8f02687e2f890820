"""Function machine entry point: `python -m functions.machine`.

Contract (architecture spec): JOB_QUEUE names the one function this machine runs; JOB_ID is the
job that caused the launch (claimed first while still available); MACHINE_MAX_JOBS and
MACHINE_IDLE_SECONDS bound its life; its id is FLY_MACHINE_ID on Fly (MACHINE_ID locally).
It claims jobs of its queue, heartbeats them, runs the handler under the function's timeout,
records each outcome with a fenced write, and exits when done or idle. On SIGTERM it stops
claiming, lets held jobs finish within the grace period, hands the rest back, and exits.

Exit codes: 0 done or idle; 2 bad configuration; 3 stopped after a job timed out (the handler's
thread may still be running, so the process ends to really stop the work).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from functions.handlers.base import HandlerContext, load_handler
from shared.db import job_store, transitions
from shared.db.models import Fence, Job, JobState
from shared.db.pool import Pool, connect, open_pool
from shared.errors import LostJobError, PermanentJobError, RetryableJobError, SnoozeJob
from shared.logging import bind_context, configure_logging, log_context
from shared.queues import QUEUES
from shared.settings import Settings, load_settings
from shared.telemetry import emit

logger = logging.getLogger("functions.machine")

EXIT_OK, EXIT_CONFIG, EXIT_TIMED_OUT = 0, 2, 3


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineConfig:
    queue: str
    machine_id: str
    first_job_id: int | None
    max_jobs: int
    idle_seconds: float
    concurrency: int
    shutdown_grace_seconds: float = 20.0

    @classmethod
    def from_env(cls, settings: Settings, env: dict[str, str]) -> MachineConfig:
        """Read the machine contract from the environment. Raises ValueError when it is incomplete."""
        queue = env.get("JOB_QUEUE", "")
        if queue not in QUEUES:
            raise ValueError(f"JOB_QUEUE must be one of {sorted(QUEUES)}, got {queue!r}")
        machine_id = env.get("FLY_MACHINE_ID") or env.get("MACHINE_ID") or f"adhoc-{os.getpid()}"
        job_id = env.get("JOB_ID")
        return cls(
            queue=queue,
            machine_id=machine_id,
            first_job_id=int(job_id) if job_id else None,
            max_jobs=int(env.get("MACHINE_MAX_JOBS", settings.machine_max_jobs)),
            idle_seconds=float(env.get("MACHINE_IDLE_SECONDS", settings.machine_idle_seconds)),
            concurrency=int(env.get("MACHINE_CONCURRENCY", settings.machine_concurrency)),
            shutdown_grace_seconds=settings.machine_shutdown_grace_seconds,
        )


@dataclass(slots=True)
class HeldJob:
    job: Job
    fence: Fence
    ctx: HandlerContext
    task: asyncio.Task[None] | None = None
    lost: bool = False
    completing: bool = False  # its result is queued for the batch commit; the fence decides now


@dataclass(slots=True)
class _Completion:
    held: HeldJob
    result: dict[str, Any]
    done: asyncio.Future[bool]


@dataclass
class Machine:
    """One function machine's loop."""

    settings: Settings
    config: MachineConfig
    handler: ModuleType
    pool: Pool
    held: dict[int, HeldJob] = field(default_factory=dict)
    started_jobs: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    timed_out: bool = False
    completions: asyncio.Queue[_Completion] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.base_ctx = HandlerContext(settings=self.settings, machine_id=self.config.machine_id, pool=self.pool)

    async def run(self) -> int:
        cfg = self.config
        async with self.pool.connection() as conn:
            await job_store.machine_started(conn, cfg.machine_id)
        warm = getattr(self.handler, "warm", None)
        if warm is not None:
            await warm(self.base_ctx)
        helpers = [
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._completer(), name="completer"),
        ]
        try:
            await self._loop()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return EXIT_TIMED_OUT if self.timed_out else EXIT_OK

    async def _loop(self) -> None:
        cfg = self.config
        prefer = cfg.first_job_id
        idle_since = asyncio.get_running_loop().time()
        while True:
            can_claim = not self.stopping.is_set() and not self.timed_out and self.started_jobs < cfg.max_jobs
            free = min(cfg.concurrency - len(self.held), cfg.max_jobs - self.started_jobs)
            # While busy, claim in batches (half the slots) rather than one claim per finished job.
            batch = 1 if not self.held else max(1, min(cfg.concurrency // 2, cfg.max_jobs - self.started_jobs))
            claimed: list[Job] = []
            if can_claim and free >= batch:
                self.wake.clear()
                async with self.pool.connection() as conn:
                    claimed = await transitions.claim(
                        conn, queue=cfg.queue, machine_id=cfg.machine_id, max_jobs=free, prefer_id=prefer
                    )
                prefer = None
                for job in claimed:
                    self._start(job)
            if self.held or claimed:
                idle_since = asyncio.get_running_loop().time()
            elif not can_claim:
                return
            else:
                idle_left = cfg.idle_seconds - (asyncio.get_running_loop().time() - idle_since)
                if idle_left <= 0:
                    logger.info("machine idle, exiting")
                    return
            if claimed and len(self.held) < cfg.concurrency:
                continue  # there may be more work right away
            await self._wait_for_change(timeout=self._wait_timeout(idle_since))

    def _wait_timeout(self, idle_since: float) -> float:
        if self.held:
            return max(self.settings.dispatcher_poll_seconds, 1.0)
        left = self.config.idle_seconds - (asyncio.get_running_loop().time() - idle_since)
        return max(0.0, min(left, 1.0))  # poll at least every second: NOTIFY is not relied on

    async def _wait_for_change(self, *, timeout: float) -> None:
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self.wake.wait()),
            asyncio.ensure_future(self.stopping.wait()),
        ]
        waiters += [held.task for held in self.held.values() if held.task is not None]
        _done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters[:2]:
            waiter.cancel()

    def _start(self, job: Job) -> None:
        self.started_jobs += 1
        fence = Fence(job_id=job.id, attempt=job.attempt, machine_id=self.config.machine_id)
        held = HeldJob(job=job, fence=fence, ctx=self.base_ctx.for_job())
        self.held[job.id] = held
        held.task = asyncio.create_task(self._run_job(held), name=f"job-{job.id}")

    async def _run_job(self, held: HeldJob) -> None:
        job = held.job
        context = {
            "jobId": job.id,
            "queue": job.queue,
            "worker": job.worker,
            "tenantId": job.tenant_id,
            "attempt": job.attempt,
            "requestId": job.meta.get("requestId"),
        }
        with log_context(**context):
            try:
                await self._execute(held)
            finally:
                self.held.pop(job.id, None)
                self.wake.set()

    async def _execute(self, held: HeldJob) -> None:
        job, timeout = held.job, self.settings.queue_timeout_seconds(self.config.queue)
        emit("job:start")
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(timeout):
                result = await self.handler.run(job, held.ctx)
        except asyncio.CancelledError:
            if held.lost or self.stopping.is_set():
                await self._after_abort(held)
                return
            raise
        except TimeoutError:
            self.timed_out = True
            await self._record_failure(held, kind="timeout", message=f"timed out after {timeout:g}s")
            return
        except SnoozeJob as snooze:
            await self._write(held, "job:snooze", transitions.snooze, held.fence, seconds=snooze.seconds)
            return
        except PermanentJobError as exc:
            await self._record_failure(held, kind=exc.kind, message=str(exc), permanent=True)
            return
        except RetryableJobError as exc:
            await self._record_failure(held, kind=exc.kind, message=str(exc), retry_after=exc.retry_after_seconds)
            return
        except Exception as exc:
            message = "".join(traceback.format_exception_only(exc)).strip()
            logger.warning("handler raised", exc_info=True)
            await self._record_failure(held, kind="error", message=message)
            return
        run_ms = round((asyncio.get_running_loop().time() - started) * 1000, 1)
        if held.lost:
            self._discard_outputs(result)
            return
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # From here the handler's work is done: the heartbeat leaves this job alone (a batch may
        # already have completed it), and the fenced batch write alone says whether it was lost.
        held.completing = True
        await self.completions.put(_Completion(held=held, result=result, done=done))
        try:
            recorded = await done
        except asyncio.CancelledError:
            # The heartbeat found the job gone while its completion waited for the batch: the
            # fenced write cannot succeed, so withdraw the outputs here.
            if not held.lost:
                raise
            recorded = False
        if not recorded:
            logger.warning("job lost before completion; outputs withdrawn")
            self._discard_outputs(result)
            return
        emit("job:complete", durationMs=run_ms)

    async def _completer(self) -> None:
        """Record completions in batches: whatever finished while the last commit was in flight
        goes into the next one (one transaction, one fsync), so busy machines batch themselves."""
        while True:
            batch = [await self.completions.get()]
            while not self.completions.empty() and len(batch) < 256:
                batch.append(self.completions.get_nowait())
            try:
                completed = await self._complete_batch(batch)
            except Exception as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item in batch:
                if not item.done.done():  # its waiter may have been cancelled (shutdown)
                    item.done.set_result(item.held.job.id in completed)

    async def _complete_batch(self, batch: list[_Completion]) -> set[int]:
        for wait_seconds in (0.5, 1.0, 2.0, 4.0, 0.0):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    completed, fresh = await transitions.complete_many(
                        conn, machine_id=self.config.machine_id, done=[(c.held.fence, c.result) for c in batch]
                    )
                    for item in batch:
                        if item.held.job.id in fresh:
                            await self._enqueue_callback(conn, item.held.job, JobState.COMPLETED, result=item.result)
                    await job_store.machine_ran_jobs(conn, self.config.machine_id, count=len(fresh))
                return completed
            except psycopg.OperationalError:
                # The database went away (restart, failover): the fence makes a retry safe.
                if not wait_seconds:
                    raise
                logger.warning("could not record completions; retrying", exc_info=True)
                await asyncio.sleep(wait_seconds)
        raise AssertionError("unreachable")

    async def _record_failure(
        self, held: HeldJob, *, kind: str, message: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        job, now = held.job, datetime.now(UTC)
        if held.lost:
            return
        backoff_fn = getattr(self.handler, "backoff", transitions.default_backoff_seconds)
        backoff = retry_after if retry_after is not None else float(backoff_fn(job.attempt))
        decision = transitions.after_failure(job, permanent=permanent, backoff_seconds=backoff, now=now)
        error = transitions.error_entry(attempt=job.attempt, at=now, kind=kind, error=message)
        try:
            async with self.pool.connection() as conn, conn.transaction():
                state = await transitions.fail(conn, held.fence, decision=decision, error=error)
                if state == JobState.DISCARDED:
                    await self._enqueue_callback(conn, job, state, errors=[*job.errors, error])
                await job_store.machine_ran_jobs(conn, self.config.machine_id, count=1)
        except LostJobError:
            logger.warning("job lost before its failure was recorded")
            return
        emit("job:error", kind=kind, error=message, nextState=state.value)

    async def _write(self, held: HeldJob, event: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            async with self.pool.connection() as conn:
                await fn(conn, *args, **kwargs)
        except LostJobError:
            logger.warning("job lost before %s was recorded", event)
            return
        emit(event)

    async def _after_abort(self, held: HeldJob) -> None:
        if held.lost:
            emit("job:cancel", reason="no longer held (cancelled or rescued)")
            return
        await self._write(held, "job:handback", transitions.hand_back, held.fence)

    async def _enqueue_callback(
        self, conn: AsyncConnection[DictRow], job: Job, state: JobState, **changes: Any
    ) -> None:
        if not job.meta.get("callbackUrl"):
            return
        from shared.callbacks import callback_job

        callback = callback_job(_replace_job(job, state=state, **changes))
        if callback is not None:
            await job_store.insert_job(conn, callback)

    def _discard_outputs(self, result: dict[str, Any]) -> None:
        for output in result.get("outputs") or []:
            key = output.get("key") if isinstance(output, dict) else None
            if isinstance(key, str):
                try:
                    self.base_ctx.storage.client.delete_object(Bucket=self.base_ctx.storage.bucket, Key=key)
                except Exception:
                    logger.warning("could not delete withdrawn output", extra={"key": key})

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_seconds)
            held = [(h.fence.job_id, h.fence.attempt) for h in self.held.values() if not (h.lost or h.completing)]
            try:
                async with self.pool.connection() as conn:
                    # The machine row's heartbeat tells the scaler this machine can still take work.
                    await job_store.machine_seen(conn, self.config.machine_id)
                    still = await transitions.heartbeat(conn, machine_id=self.config.machine_id, held=held)
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)
                continue
            for job_id, _ in held:
                entry = self.held.get(job_id)
                # A job whose result went to the batch meanwhile is the fenced write's business.
                if job_id not in still and entry is not None and entry.task is not None and not entry.completing:
                    # Cancelled or rescued: stop the work now and publish nothing.
                    entry.lost = True
                    entry.ctx.cancelled.set()
                    entry.task.cancel()

    async def _listen(self) -> None:
        while True:
            try:
                conn = await connect(self.settings.session_database_url)
                async with conn:
                    await conn.execute("LISTEN cp_jobs")
                    async for note in conn.notifies():
                        if note.payload == self.config.queue:
                            self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("listener lost its connection; reconnecting")
                await asyncio.sleep(1.0)

    async def shutdown(self) -> None:
        """SIGTERM: stop claiming; let held jobs finish within the grace period; hand back the rest."""
        if self.stopping.is_set():
            return
        logger.info("machine stopping")
        self.stopping.set()
        tasks = [h.task for h in self.held.values() if h.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _replace_job(job: Job, **changes: Any) -> Job:
    from dataclasses import replace

    return replace(job, **changes)


async def main_async(settings: Settings, config: MachineConfig) -> int:
    bind_context(machineId=config.machine_id, queue=config.queue)
    handler = load_handler(config.queue)
    if config.queue == "default":
        from functions.handlers.default import load_function_modules

        load_function_modules(settings.default_function_modules)
    pool = await open_pool(settings.database_url, min_size=1, max_size=config.concurrency + 2)
    machine = Machine(settings=settings, config=config, handler=handler, pool=pool)
    loop = asyncio.get_running_loop()
    shutdown_tasks: set[asyncio.Task[None]] = set()

    def on_sigterm() -> None:
        task = asyncio.create_task(machine.shutdown())
        shutdown_tasks.add(task)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigterm)
    emit("queue:start")
    try:
        return await machine.run()
    finally:
        emit("queue:stop", jobsStarted=machine.started_jobs)
        await asyncio.gather(*shutdown_tasks, return_exceptions=True)
        closer = getattr(handler, "close", None)
        if closer is not None:
            await closer(machine.base_ctx)
        outbound = machine.base_ctx.resources.get("outbound")
        if outbound is not None:
            await outbound.aclose()
        await pool.close()


def main() -> int:
    settings = load_settings()
    configure_logging(settings.log_level, service="machine")
    try:
        config = MachineConfig.from_env(settings, dict(os.environ))
    except ValueError as exc:
        logger.error("bad machine configuration", extra={"error": str(exc)})
        return EXIT_CONFIG
    code = asyncio.run(main_async(settings, config))
    logger.info("machine exited", extra={"exitCode": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
