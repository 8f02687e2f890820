"""Scaler: launch function machines while a queue has due work and capacity, never more."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from shared.db import job_store
from shared.db.pool import Pool
from shared.db.sql import QUERIES
from shared.errors import LauncherError
from shared.launchers import Launcher, MachineSpec
from shared.settings import Settings

logger = logging.getLogger("functions.dispatcher.scaler")


@dataclass(frozen=True, slots=True)
class Demand:
    queue: str
    limit: int
    paused: bool
    due: int
    first_due_id: int | None
    executing: int
    live_machines: int


def machines_to_launch(demand: Demand, *, concurrency: int) -> int:
    """How many new machines `demand` needs: pure, so the rule is easy to test and read.

    Idle slots on live machines (including ones still booting) absorb due work first; new
    machines cover the rest, capped so machines x concurrency never exceeds the queue limit.
    """
    if demand.paused or demand.limit <= 0 or demand.due <= 0:
        return 0
    idle_slots = max(0, demand.live_machines * concurrency - demand.executing)
    uncovered = max(0, demand.due - idle_slots)
    needed = math.ceil(uncovered / concurrency)
    room = math.ceil(demand.limit / concurrency) - demand.live_machines
    return max(0, min(needed, room))


@dataclass
class Scaler:
    settings: Settings
    pool: Pool
    launcher: Launcher

    async def run_once(self) -> int:
        """Launch what every queue needs now; returns the number of machines launched."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                QUERIES["queue_demand"],
                {
                    "boot_grace_seconds": self.settings.machine_boot_grace_seconds,
                    "seen_within_seconds": 3 * self.settings.heartbeat_interval_seconds + 1,
                },
            )
            demands = [Demand(*row.values()) for row in await cur.fetchall()]
        launched = 0
        for demand in demands:
            count = machines_to_launch(demand, concurrency=self.settings.machine_concurrency)
            for _ in range(count):
                if not await self._launch(demand):
                    break
                launched += 1
        return launched

    async def _launch(self, demand: Demand) -> bool:
        env = {
            "JOB_QUEUE": demand.queue,
            "MACHINE_MAX_JOBS": str(self.settings.machine_max_jobs),
            "MACHINE_IDLE_SECONDS": str(self.settings.machine_idle_seconds),
            "MACHINE_CONCURRENCY": str(self.settings.machine_concurrency),
        }
        if demand.first_due_id is not None:
            env["JOB_ID"] = str(demand.first_due_id)
        spec = MachineSpec(queue=demand.queue, job_id=demand.first_due_id, env=env)
        try:
            ref = await self.launcher.launch(spec)
        except LauncherError as exc:
            logger.warning("machine launch failed", extra={"queue": demand.queue, "error": str(exc)})
            return False
        async with self.pool.connection() as conn:
            await job_store.record_machine(
                conn,
                machine_id=ref.id,
                queue=demand.queue,
                launcher=self.launcher.kind,
                job_id=demand.first_due_id,
                detail=dict(ref.detail),
            )
        logger.info("machine launched", extra={"queue": demand.queue, "machineId": ref.id})
        return True
