"""Function machine entry point: `python -m functions.machine`.

Contract (architecture spec): JOB_QUEUE names the one function this machine runs; JOB_ID is the
job that caused the launch (claimed first while still available); MACHINE_MAX_JOBS and
MACHINE_IDLE_SECONDS bound its life; its id is FLY_MACHINE_ID on Fly (MACHINE_ID locally).
It claims jobs of its queue, heartbeats them, runs the handler under the function's timeout,
records each outcome with a fenced write, and exits when done or idle. On SIGTERM it stops
claiming, lets held jobs finish within the grace period, hands the rest back, and exits.

A machine survives its own faults: a failed claim or heartbeat is retried with backoff, and a
completion is retried while the database is away. If it cannot reach the database for half the
lifeline's rescue window while it holds jobs, it fences itself: it stops its handlers, publishes
nothing, hands back what it can and exits, before the lifeline gives those jobs to someone else.

Exit codes: 0 done or idle; 2 bad configuration; 3 a job timed out (its handler's thread may
still be running: the failure is recorded, the other held jobs are handed back, and the process
ends at once so that work really stops); 4 self-fenced (database unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout
from pydantic import ValidationError

from functions.handlers.base import HandlerContext, load_handler
from shared.db import job_store, transitions
from shared.db.models import Fence, Job, JobState
from shared.db.pool import Pool, connect, open_pool
from shared.errors import LostJobError, PermanentJobError, RetryableJobError, SnoozeJob
from shared.logging import bind_context, configure_logging, log_context
from shared.queues import QUEUES
from shared.settings import Settings, load_settings
from shared.storable_json import unstorable_values
from shared.telemetry import emit

logger = logging.getLogger("functions.machine")

EXIT_OK, EXIT_CONFIG, EXIT_TIMED_OUT, EXIT_SELF_FENCED = 0, 2, 3, 4
DB_RETRY_MAX_SECONDS = 5.0  # backoff cap for claims, heartbeats and completions
HAND_BACK_SECONDS = 5.0  # how long a stopping machine tries to hand a job back


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
    lost: bool = False  # the database says this claim is gone (cancelled or rescued)
    abandoned: bool = False  # this machine gave the claim up (self-fenced): publish nothing
    completing: bool = False  # its result is queued for the batch commit; the fence decides now


@dataclass(slots=True)
class _Completion:
    held: HeldJob
    result: dict[str, Any]
    done: asyncio.Future[bool | None]  # recorded, lost, or None: unknown (database unreachable)


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
    self_fenced: bool = False
    completions: asyncio.Queue[_Completion] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.base_ctx = HandlerContext(settings=self.settings, machine_id=self.config.machine_id, pool=self.pool)
        self.db_reached_at = time.monotonic()  # the last time a database round trip went through
        # Half the rescue window: the lifeline may hand our jobs to another machine after the full one.
        self.self_fence_after = self.settings.lifeline_rescue_after / 2

    def _reached_database(self) -> None:
        self.db_reached_at = time.monotonic()

    def exit_code(self) -> int:
        if self.timed_out:
            return EXIT_TIMED_OUT
        return EXIT_SELF_FENCED if self.self_fenced else EXIT_OK

    async def run(self) -> int:
        cfg = self.config
        await self._with_retries("record the machine's start", job_store.machine_started, cfg.machine_id)
        # The heartbeat starts before warming up: a machine that takes its time to warm (fonts on
        # a busy host) must still count as capacity, or the scaler launches more and more of them.
        helpers = [
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._completer(), name="completer"),
        ]
        try:
            warm = getattr(self.handler, "warm", None)
            if warm is not None:
                await warm(self.base_ctx)
            await self._loop()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return self.exit_code()

    async def _with_retries(self, what: str, fn: Any, *args: Any) -> None:
        """Run `fn(conn, *args)` until it goes through or the machine stops (boot-time writes)."""
        delay = 0.25
        while True:
            try:
                async with self.pool.connection() as conn:
                    await fn(conn, *args)
                self._reached_database()
                return
            except (psycopg.Error, OSError, PoolTimeout):
                if self.stopping.is_set() or time.monotonic() - self.db_reached_at > self.self_fence_after:
                    raise
                logger.warning("could not %s; retrying", what, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)

    async def _loop(self) -> None:
        cfg = self.config
        prefer = cfg.first_job_id
        idle_since = asyncio.get_running_loop().time()
        claim_delay = 0.0
        while True:
            can_claim = not self.stopping.is_set() and not self.timed_out and self.started_jobs < cfg.max_jobs
            free = min(cfg.concurrency - len(self.held), cfg.max_jobs - self.started_jobs)
            # While busy, claim in batches (half the slots) rather than one claim per finished job.
            batch = 1 if not self.held else max(1, min(cfg.concurrency // 2, cfg.max_jobs - self.started_jobs))
            claimed: list[Job] = []
            if can_claim and free >= batch:
                self.wake.clear()
                try:
                    async with self.pool.connection() as conn:
                        claimed = await transitions.claim(
                            conn, queue=cfg.queue, machine_id=cfg.machine_id, max_jobs=free, prefer_id=prefer
                        )
                except (psycopg.Error, OSError, PoolTimeout):
                    # A claim that failed claimed nothing (one statement); the jobs held keep running.
                    claim_delay = min(max(claim_delay * 2, 0.25), DB_RETRY_MAX_SECONDS)
                    logger.warning("claim failed; retrying in %.2fs", claim_delay, exc_info=True)
                    await self._wait_for_change(timeout=claim_delay)
                    continue
                claim_delay = 0.0
                self._reached_database()
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
        held = HeldJob(job=job, fence=Fence.of(job), ctx=self.base_ctx.for_job(job))
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
            if held.lost or held.abandoned or self.stopping.is_set():
                await self._after_abort(held)
                return
            raise
        except TimeoutError:
            await self._record_failure(held, kind="timeout", message=f"timed out after {timeout:g}s")
            self._stop_after_timeout()
            return
        except SnoozeJob as snooze:
            await self._write(held, "job:snooze", transitions.snooze, held.fence, seconds=snooze.seconds)
            await self._withdraw(held)  # the next attempt runs under a claim of its own
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
        if held.lost or held.abandoned:
            # No completion was ever attempted with this claim, so nothing of it can be recorded:
            # its objects (under its own claim's prefix) go.
            await self._withdraw(held)
            return
        recorded_result = held.ctx.recorded_result(result)
        unstorable = next(unstorable_values(recorded_result, ("result",)), None)
        if unstorable is not None:
            # A value the database could store but never give back (see shared/storable_json.py)
            # would make every read of this job fail: the attempt fails instead, visibly.
            await self._record_failure(
                held, kind="unstorable-result", message=f"{unstorable.path}: {unstorable.message}", permanent=True
            )
            return
        done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        # From here the handler's work is done: the heartbeat leaves this job alone (a batch may
        # already have completed it), and the fenced batch write alone says whether it was lost.
        held.completing = True
        await self.completions.put(_Completion(held=held, result=recorded_result, done=done))
        try:
            recorded = await done
        except asyncio.CancelledError:
            # Shutdown or self-fencing while the completion waited: whether it was recorded is
            # unknown, so its outputs stay (under its own claim: shown only if it was recorded).
            logger.warning("stopped while recording a completion; outcome left to the database")
            return
        if recorded is None:
            logger.warning("could not record the completion (database unreachable); outcome left to the database")
            return
        if not recorded:
            logger.warning("job lost before completion; outputs withdrawn")
            await self._withdraw(held)
            return
        emit("job:complete", durationMs=run_ms)

    async def _withdraw(self, held: HeldJob) -> None:
        """Delete the objects of a claim that can never be recorded (in a thread: boto3 blocks)."""
        if held.ctx.job_outputs is not None and held.ctx.job_outputs.reserved:
            await asyncio.to_thread(held.ctx.job_outputs.withdraw)

    def _stop_after_timeout(self) -> None:
        """A handler overran its timeout: its thread may still be running, and only the end of the
        process stops it. Stop claiming, hand the other held jobs back, and exit (main does)."""
        self.timed_out = True
        self.stopping.set()
        current = asyncio.current_task()
        for other in list(self.held.values()):
            if other.task is not None and other.task is not current and not other.completing:
                other.task.cancel()

    async def _completer(self) -> None:
        """Record completions in batches: whatever finished while the last commit was in flight
        goes into the next one (one transaction, one fsync), so busy machines batch themselves.
        A batch that cannot be recorded before the self-fence deadline answers None (unknown)."""
        while True:
            batch = [await self.completions.get()]
            while not self.completions.empty() and len(batch) < 256:
                batch.append(self.completions.get_nowait())
            completed = await self._complete_batch(batch)
            for item in batch:
                if not item.done.done():  # its waiter may have been cancelled (shutdown)
                    item.done.set_result(None if completed is None else item.held.job.id in completed)

    async def _complete_batch(self, batch: list[_Completion]) -> set[int] | None:
        delay = 0.25
        while True:
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    completed, fresh = await transitions.complete_many(
                        conn, done=[(c.held.fence, c.result) for c in batch]
                    )
                    await job_store.machine_ran_jobs(conn, self.config.machine_id, count=len(fresh))
                self._reached_database()
                return completed
            except (psycopg.Error, OSError, PoolTimeout):
                # The database went away (restart, failover): the fence makes a retry safe, and a
                # commit whose reply was lost is recognised as ours by the retry.
                if time.monotonic() - self.db_reached_at > self.self_fence_after:
                    return None
                logger.warning("could not record completions; retrying in %.2fs", delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)

    async def _record_failure(
        self, held: HeldJob, *, kind: str, message: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        try:
            await self._record_failure_of(
                held, kind=kind, message=message, permanent=permanent, retry_after=retry_after
            )
        finally:
            # The claim ends without a completion: nothing it stored can ever be shown.
            await self._withdraw(held)

    async def _record_failure_of(
        self, held: HeldJob, *, kind: str, message: str, permanent: bool, retry_after: float | None
    ) -> None:
        job, now = held.job, datetime.now(UTC)
        if held.lost or held.abandoned:
            return
        backoff_fn = getattr(self.handler, "backoff", transitions.default_backoff_seconds)
        backoff = retry_after if retry_after is not None else float(backoff_fn(job.attempt))
        decision = transitions.after_failure(job, permanent=permanent, backoff_seconds=backoff, now=now)
        error = transitions.error_entry(attempt=job.attempt, at=now, kind=kind, error=message)

        async def fail(conn: AsyncConnection[DictRow]) -> JobState:
            async with conn.transaction():
                state = await transitions.fail(conn, held.fence, decision=decision, error=error)
                await job_store.machine_ran_jobs(conn, self.config.machine_id, count=1)
            return state

        try:
            state = await self._fenced_write(held, fail)
        except LostJobError:
            logger.warning("job lost before its failure was recorded")
            return
        if state is None:
            return
        emit("job:error", kind=kind, error=message, nextState=state.value)

    async def _fenced_write(self, held: HeldJob, write: Any) -> Any:
        """`write(conn)` retried while the database is away (the fence makes retries safe); None
        when it could not go through before the self-fence deadline. Raises LostJobError."""
        delay = 0.25
        while True:
            try:
                async with self.pool.connection() as conn:
                    outcome = await write(conn)
                self._reached_database()
                return outcome
            except (psycopg.Error, OSError, PoolTimeout):
                if held.abandoned or time.monotonic() - self.db_reached_at > self.self_fence_after:
                    logger.warning("could not record the job's outcome (database unreachable)", exc_info=True)
                    return None
                logger.warning("could not record the job's outcome; retrying in %.2fs", delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)

    async def _write(self, held: HeldJob, event: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        async def write(conn: AsyncConnection[DictRow]) -> bool:
            await fn(conn, *args, **kwargs)
            return True

        try:
            done = await self._fenced_write(held, write)
        except LostJobError:
            logger.warning("job lost before %s was recorded", event)
            return
        if done:
            emit(event)

    async def _after_abort(self, held: HeldJob) -> None:
        if held.lost:
            emit("job:cancel", reason="no longer held (cancelled or rescued)")
            await self._withdraw(held)
            return
        # Shutting down, timed out elsewhere or self-fenced: give the attempt back if the
        # database lets us, briefly; otherwise the lifeline will.
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                async with self.pool.connection() as conn:
                    await transitions.hand_back(conn, held.fence)
        except LostJobError:
            logger.warning("job lost before it was handed back")
        except (psycopg.Error, OSError, PoolTimeout, TimeoutError):
            logger.warning("could not hand the job back; the lifeline will rescue it", exc_info=True)
        else:
            emit("job:handback")
        await self._withdraw(held)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_seconds)
            held = [h.fence for h in self.held.values() if not (h.lost or h.abandoned or h.completing)]
            try:
                # Bounded: a pool waiting for a connection that never comes must not hold the
                # heartbeat (and the self-fence check below) hostage.
                async with asyncio.timeout(max(2 * self.settings.heartbeat_interval_seconds, 1.0)):
                    async with self.pool.connection() as conn:
                        # The machine row's heartbeat tells the scaler this machine can still take work.
                        await job_store.machine_seen(conn, self.config.machine_id)
                        still = await transitions.heartbeat(conn, held=held)
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)
                if self.held and time.monotonic() - self.db_reached_at > self.self_fence_after:
                    self._self_fence()
                continue
            self._reached_database()
            for fence in held:
                entry = self.held.get(fence.job_id)
                # A job whose result went to the batch meanwhile is the fenced write's business.
                if fence.job_id not in still and entry is not None and entry.task is not None and not entry.completing:
                    # Cancelled or rescued: stop the work now and publish nothing.
                    entry.lost = True
                    entry.ctx.cancelled.set()
                    entry.task.cancel()

    def _self_fence(self) -> None:
        """The database has been out of reach for half the rescue window: the lifeline may soon
        give these jobs to another machine, so stop them here and publish nothing."""
        if self.self_fenced:
            return
        logger.error(
            "database unreachable for %.0fs while holding jobs: stopping them (self-fencing)",
            time.monotonic() - self.db_reached_at,
        )
        self.self_fenced = True
        self.stopping.set()
        for entry in list(self.held.values()):
            entry.abandoned = True
            entry.ctx.cancelled.set()
            if entry.task is not None and not entry.completing:
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


async def main_async(settings: Settings, config: MachineConfig) -> int:
    bind_context(machineId=config.machine_id, queue=config.queue)
    handler = load_handler(config.queue)
    if config.queue == "default":
        from functions.handlers.default import load_function_modules

        load_function_modules(settings.default_function_modules)
    # A short checkout wait: with the database away, every loop of the machine learns it in
    # seconds and can retry, or fence itself, instead of waiting 30 s per attempt.
    pool = await open_pool(settings.database_url, min_size=1, max_size=config.concurrency + 2, checkout_timeout=3.0)
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
        code = await machine.run()
    finally:
        emit("queue:stop", jobsStarted=machine.started_jobs)
        await asyncio.gather(*shutdown_tasks, return_exceptions=True)
        closer = getattr(handler, "close", None)
        if closer is not None:
            await closer(machine.base_ctx)
        outbound = machine.base_ctx.resources.get("outbound")
        if outbound is not None:
            await outbound.aclose()
        with contextlib.suppress(Exception):
            await pool.close()
    if code in (EXIT_TIMED_OUT, EXIT_SELF_FENCED):
        # A handler's thread may still be running (it overran, or was abandoned), and leaving
        # asyncio.run would wait for it: end the process here, so its work really stops.
        logger.info("machine exited", extra={"exitCode": code})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main() -> int:
    try:
        settings = load_settings()
    except ValidationError as exc:
        configure_logging("info", service="machine")
        logger.error("bad machine configuration", extra={"error": str(exc)})
        return EXIT_CONFIG
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
