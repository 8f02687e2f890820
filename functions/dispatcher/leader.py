"""The dispatcher: one leader among N instances (a lease row), waking on NOTIFY and a poll.

The leader runs six duties, each in a loop of its own (duties.py): the scaler launches
machines, the reconciler keeps the machines table in step with the launcher, the stager,
lifeline and pruner maintain jobs, and the scheduler inserts due occurrences of schedules. A
failing duty backs off alone. Leadership ends only when the lease does (lease.py): another
instance took it over after it expired, or the leader's own connection, which renews it and
LISTENs, is gone. A standby tries to take the lease every fifth
of DISPATCHER_LEASE_SECONDS, so a dead or frozen leader is replaced within about one lease period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from psycopg import AsyncConnection, Notify
from psycopg.rows import DictRow

from shared.db.pool import Pool
from shared.db.sql import QUERIES
from shared.launchers import Launcher
from shared.notify import CONTROL_CHANNEL, JOBS_CHANNEL, listen, machines_to_stop
from shared.settings import Settings
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

from .duties import Duty, DutyErrors
from .lease import Lease, connect_leader, new_holder_id
from .maintenance import EventSender, Lifeline, Pruner, Stager
from .reconciler import Reconciler
from .scaler import Scaler
from .scheduler import Scheduler, utc_now

logger = logging.getLogger("functions.dispatcher")

# Stepping down, a duty halfway through a step (a launch, say) may finish it before it is cancelled.
STEP_DOWN_GRACE_SECONDS = 5.0

Role = Literal["leader", "standby", "off"]


@dataclass
class Dispatcher:
    settings: Settings
    pool: Pool
    launcher: Launcher
    role: Role = "off"
    holder: str = field(default_factory=new_holder_id)
    clock: Callable[[], datetime] = utc_now  # what "now" is for the scheduler (tests set it)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.lease = Lease(self.holder, self.settings.dispatcher_lease_seconds)
        self.scaler = Scaler(self.settings, self.pool, self.launcher, may_act=self.lease.valid)
        self.reconciler = Reconciler(self.pool, self.launcher)
        self.stager = Stager(self.pool)
        self.lifeline = Lifeline(self.pool, float(self.settings.lifeline_rescue_after))
        self.pruner = Pruner(self.pool, float(self.settings.pruner_max_age))
        self.event_sender = EventSender(self.pool)
        self.scheduler = Scheduler(self.pool, self.settings.scheduler_misfire_grace_seconds, clock=self.clock)
        self.scaler_wake = asyncio.Event()
        poll, maintenance = self.settings.dispatcher_poll_seconds, self.settings.dispatcher_maintenance_seconds
        self.duties = [
            Duty("reconciler", self.reconciler.run_once, poll),
            Duty("scaler", self.scaler.run_once, poll, wake=self.scaler_wake),
            Duty("stager", self.stager.run_once, maintenance),
            Duty("lifeline", self.lifeline.run_once, maintenance),
            Duty("pruner", self.pruner.run_once, maintenance),
            Duty("scheduler", self.scheduler.run_once, maintenance),
            Duty("events", self.event_sender.run_once, poll),
        ]
        self.duty_errors = DutyErrors(self.pool)

    async def run(self, stop: asyncio.Event) -> None:
        """Contend for leadership until `stop` is set; survive database restarts."""
        self.role = "standby"
        while not stop.is_set():
            try:
                await self._contend(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                emit(EventName.PLUGIN_ERROR, plugin="dispatcher", error=f"{type(exc).__name__}: {exc}")
            self.role = "standby"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        self.role = "off"

    async def _contend(self, stop: asyncio.Event) -> None:
        """Stand by on a connection of our own until we hold the lease, then lead on it."""
        conn = await connect_leader(self.settings.session_database_url, self.lease.ttl_seconds)
        async with conn:
            announced = False
            while not stop.is_set():
                if await self.lease.acquire(conn):
                    break
                if not announced:
                    logger.info("dispatcher standing by", extra={"holder": self.holder})
                    announced = True
                # Jitter: standbys started together do not all knock at once.
                pause = self.lease.standby_retry_seconds * random.uniform(0.8, 1.2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=pause)
            if stop.is_set() or self.lease.term is None:
                return
            term = self.lease.term
            self.role = "leader"
            emit(EventName.PLUGIN_START, plugin="dispatcher", role="leader", holder=self.holder, term=term)
            reason = "error"
            try:
                reason = await self._lead(conn, stop, term)
            finally:
                self.lease.drop()
                self.role = "standby"
                emit(EventName.PLUGIN_STOP, plugin="dispatcher", holder=self.holder, term=term, reason=reason)

    async def _lead(self, conn: AsyncConnection[DictRow], stop: asyncio.Event, term: int) -> str:
        """Run the duties until the lease is lost or `stop` is set; returns why leadership ended."""
        await listen(conn, JOBS_CHANNEL)
        await listen(conn, CONTROL_CHANNEL)
        keeper = asyncio.create_task(self._keep(conn), name="dispatcher-lease")
        stopping = asyncio.create_task(stop.wait(), name="dispatcher-stop")
        cap = self.settings.dispatcher_duty_backoff_max_seconds
        loops = [
            asyncio.create_task(duty.loop(self.lease.valid, term, self.duty_errors, cap), name=f"duty-{duty.name}")
            for duty in self.duties
        ]
        try:
            await asyncio.wait([keeper, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.lease.drop()  # no duty starts another step from here on
            await self._stop_duties(loops)
            stopping.cancel()
            if not keeper.done():
                keeper.cancel()
            with contextlib.suppress(BaseException):
                await stopping
        if keeper.done() and not keeper.cancelled():
            # The connection failed (re-raised: run() reconnects) or another instance took over.
            return keeper.result()
        with contextlib.suppress(BaseException):
            await keeper
        with contextlib.suppress(Exception):
            await self.lease.resign(conn, term)
        return "stopped"

    async def _stop_duties(self, loops: list[asyncio.Task[None]]) -> None:
        idle = [asyncio.create_task(duty.idle.wait()) for duty in self.duties]
        await asyncio.wait(idle, timeout=STEP_DOWN_GRACE_SECONDS)
        for task in idle + loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def _keep(self, conn: AsyncConnection[DictRow]) -> str:
        """Listen for notifications and renew the lease in time; returns when the lease is lost.

        One task owns the connection: psycopg's notifies() holds it while waiting, so waiting
        ends whenever a renewal falls due. A connection error propagates (leadership ends).
        """
        while True:
            async with contextlib.aclosing(conn.notifies(timeout=max(0.0, self.lease.renew_due()))) as notes:
                async for note in notes:
                    await self._on_notify(note)
                    if self.lease.renew_due() <= 0:
                        break
            try:
                renewed = await self.lease.renew(conn)
            except BaseException:
                self.lease.drop()
                raise
            if not renewed:
                logger.warning("dispatcher lease taken over", extra={"holder": self.holder})
                return "lease lost"

    async def _on_notify(self, note: Notify) -> None:
        if note.channel == CONTROL_CHANNEL:
            # In the background: nothing may delay the renewal of the lease.
            self._spawn(self._on_control(note.payload))
        self.scaler_wake.set()

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_control(self, payload: str) -> None:
        """Stop the machines of cancelled running jobs when nothing else runs on them."""
        try:
            for machine_id in machines_to_stop(payload):
                async with self.pool.connection() as c:
                    cur = await c.execute(QUERIES["machine_jobs_executing"], {"machine_id": machine_id})
                    row = await cur.fetchone()
                if row and row["n"] == 0 and self.lease.valid():
                    logger.info("stopping machine of a cancelled job", extra={"machineId": machine_id})
                    self._spawn(self._stop_machine(machine_id))
        except Exception:
            logger.warning("could not handle a control message", exc_info=True)

    async def _stop_machine(self, machine_id: str) -> None:
        try:
            await self.launcher.stop(machine_id)
        except Exception:
            logger.warning("could not stop machine", extra={"machineId": machine_id}, exc_info=True)
