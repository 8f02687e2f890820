"""The dispatcher: one leader among N instances (advisory lock), waking on NOTIFY and a poll.

The leader launches machines (scaler), reconciles the machines table, and runs the stager,
lifeline and pruner on an interval. A standby retries the lock every few seconds; when the
leader's connection dies Postgres releases its lock and a standby takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from shared.db.pool import Pool, connect
from shared.launchers import Launcher
from shared.settings import Settings
from shared.telemetry import emit

from .maintenance import Lifeline, Pruner, Stager
from .reconciler import Reconciler
from .scaler import Scaler

logger = logging.getLogger("functions.dispatcher")

# Any fixed number shared by every instance of one deployment.
LEADER_LOCK = 7_420_002
CONTROL_CHANNEL = "cp_control"

Role = Literal["leader", "standby", "off"]


@dataclass
class Dispatcher:
    settings: Settings
    pool: Pool
    launcher: Launcher
    role: Role = "off"
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ticks: int = 0
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.scaler = Scaler(self.settings, self.pool, self.launcher)
        self.reconciler = Reconciler(self.pool, self.launcher)
        self.stager = Stager(self.pool)
        self.lifeline = Lifeline(self.pool, float(self.settings.lifeline_rescue_after))
        self.pruner = Pruner(self.pool, float(self.settings.pruner_max_age))

    async def run(self, stop: asyncio.Event) -> None:
        """Contend for leadership until `stop` is set; survive database restarts."""
        self.role = "standby"
        while not stop.is_set():
            try:
                await self._contend(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                emit("plugin:error", plugin="dispatcher", error=f"{type(exc).__name__}: {exc}")
            self.role = "standby"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        self.role = "off"

    async def _contend(self, stop: asyncio.Event) -> None:
        conn = await connect(self.settings.session_database_url)
        async with conn:
            while not stop.is_set():
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (LEADER_LOCK,))
                row = await cur.fetchone()
                if row and row["ok"]:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)
            if stop.is_set():
                return
            self.role = "leader"
            emit("plugin:start", plugin="dispatcher", role="leader")
            try:
                await self._lead(conn, stop)
            finally:
                emit("plugin:stop", plugin="dispatcher")

    async def _lead(self, conn: AsyncConnection[DictRow], stop: asyncio.Event) -> None:
        await conn.execute("LISTEN cp_jobs")
        await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
        listener = asyncio.create_task(self._listen(conn))
        last_maintenance = 0.0
        try:
            while not stop.is_set():
                if listener.done():
                    listener.result()  # re-raise the connection error: _contend reconnects
                self.wake.clear()
                now = time.monotonic()
                await self.reconciler.run_once()
                if now - last_maintenance >= self.settings.dispatcher_maintenance_seconds:
                    await self.stager.run_once()
                    await self.lifeline.run_once()
                    await self.pruner.run_once()
                    last_maintenance = now
                await self.scaler.run_once()
                self.ticks += 1
                waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait()), listener]
                await asyncio.wait(
                    waiters, timeout=self.settings.dispatcher_poll_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in waiters[:2]:
                    waiter.cancel()
        finally:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener

    async def _listen(self, conn: AsyncConnection[DictRow]) -> None:
        async for note in conn.notifies():
            if note.channel == CONTROL_CHANNEL:
                await self._on_control(note.payload)
            self.wake.set()

    async def _on_control(self, payload: str) -> None:
        """Stop the machines of cancelled running jobs when nothing else runs on them."""
        try:
            message = json.loads(payload)
        except ValueError:
            return
        for machine_id in message.get("stopMachines", []):
            async with self.pool.connection() as c:
                cur = await c.execute(
                    "SELECT count(*) AS n FROM jobs WHERE state = 'executing' AND attempted_by = %s", (machine_id,)
                )
                row = await cur.fetchone()
            if row and row["n"] == 0:
                logger.info("stopping machine of a cancelled job", extra={"machineId": machine_id})
                task = asyncio.create_task(self._stop_machine(machine_id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _stop_machine(self, machine_id: str) -> None:
        try:
            await self.launcher.stop(machine_id)
        except Exception:
            logger.warning("could not stop machine", extra={"machineId": machine_id}, exc_info=True)
