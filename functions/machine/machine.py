"""One function machine: the held jobs, and the parts that work on them.

The claim loop takes jobs, the executor runs each under the function's timeout, the recorder
writes outcomes (fenced, batched), and the heartbeat keeps claims alive and notices lost ones.
The machine owns the shared state (held jobs, stopping) and the two ways it ends early: a job
that overran its timeout, and self-fencing when the database stays out of reach.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import ModuleType

from functions.handlers.base import HandlerContext
from functions.registry import load_registry
from shared.db import job_store, transitions
from shared.db.models import Fence, Job
from shared.db.pool import Pool
from shared.logging import log_context
from shared.settings import Settings

from .claimer import ClaimLoop
from .config import EXIT_OK, EXIT_SELF_FENCED, EXIT_TIMED_OUT, MachineConfig
from .executor import Executor
from .heartbeat import Heartbeat
from .held import HeldJob
from .reach import DatabaseReach
from .recorder import Recorder

logger = logging.getLogger("functions.machine")


@dataclass
class Machine:
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

    def __post_init__(self) -> None:
        self.base_ctx = HandlerContext(settings=self.settings, machine_id=self.config.machine_id, pool=self.pool)
        # Half the rescue window: the lifeline may hand our jobs to another machine after the full one.
        self.reach = DatabaseReach(self_fence_after=self.settings.lifeline_rescue_after / 2)
        self.recorder = Recorder(
            pool=self.pool,
            machine_id=self.config.machine_id,
            reach=self.reach,
            backoff=getattr(self.handler, "backoff", transitions.default_backoff_seconds),
        )
        self.executor = Executor(
            handler=self.handler,
            timeout_seconds=load_registry()[self.config.queue].timeout_for(self.settings),
            recorder=self.recorder,
            stopping=self.stopping,
            on_timeout=self._stop_after_timeout,
        )
        self.heartbeat = Heartbeat(
            pool=self.pool,
            machine_id=self.config.machine_id,
            interval_seconds=self.settings.heartbeat_interval_seconds,
            reach=self.reach,
            held=self.held,
            on_unreachable=self._self_fence,
        )
        self.claimer = ClaimLoop(self)

    def exit_code(self) -> int:
        if self.timed_out:
            return EXIT_TIMED_OUT
        return EXIT_SELF_FENCED if self.self_fenced else EXIT_OK

    def can_claim(self) -> bool:
        return not self.stopping.is_set() and not self.timed_out and self.started_jobs < self.config.max_jobs

    async def run(self) -> int:
        async def started() -> bool:
            async with self.pool.connection() as conn:
                await job_store.machine_started(conn, self.config.machine_id)
            return True

        if await self.reach.retrying("record the machine's start", started, give_up=self.stopping.is_set) is None:
            return EXIT_SELF_FENCED  # it never held anything: nothing to hand back
        # The heartbeat starts before warming up: a machine that takes its time to warm (fonts on
        # a busy host) must still count as capacity, or the scaler launches more and more of them.
        helpers = [
            asyncio.create_task(self.claimer.listen(), name="listen"),
            asyncio.create_task(self.heartbeat.run(), name="heartbeat"),
            asyncio.create_task(self.recorder.run(), name="recorder"),
        ]
        try:
            warm = getattr(self.handler, "warm", None)
            if warm is not None:
                await warm(self.base_ctx)
            await self.claimer.run()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return self.exit_code()

    def start(self, job: Job) -> None:
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
                await self.executor.execute(held)
            finally:
                self.held.pop(job.id, None)
                self.wake.set()

    def _stop_after_timeout(self, timed_out: HeldJob) -> None:
        """A handler overran its timeout: its thread may still be running, and only the end of the
        process stops it. Stop claiming, hand the other held jobs back, and exit (main does)."""
        self.timed_out = True
        self.stopping.set()
        for other in list(self.held.values()):
            if other is not timed_out:
                other.stop()

    def _self_fence(self) -> None:
        """The database has been out of reach for half the rescue window: the lifeline may soon
        give these jobs to another machine, so stop them here and publish nothing."""
        if self.self_fenced:
            return
        logger.error(
            "database unreachable for %.0fs while holding jobs: stopping them (self-fencing)",
            self.reach.unreachable_for(),
        )
        self.self_fenced = True
        self.stopping.set()
        for entry in list(self.held.values()):
            entry.abandoned = True
            entry.stop()

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
