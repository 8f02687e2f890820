"""Scaler: launch function machines while a queue has due work and capacity, never more.

A queue whose machines keep failing at boot (they end non-zero within the boot grace without
finishing a job, or stay launching past it) is relaunched ever more slowly: after n such
failures in a row its next launch waits MACHINE_BOOT_BACKOFF_SECONDS * 2^(n-1) after the
previous one, up to MACHINE_BOOT_BACKOFF_MAX_SECONDS, one machine at a time. The count comes from the machines table
(the queue_boot_failures query), so it survives a change of leader; a machine of the queue that
boots (finishes a job, exits 0 or outlives the boot grace) resets it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared.db import job_store
from shared.db.job_store import Conn
from shared.db.pool import Pool
from shared.db.sql import QUERIES
from shared.errors import LauncherError
from shared.launchers import Launcher, MachineSpec
from shared.settings import Settings

from .duties import backoff_delay

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


@dataclass(frozen=True, slots=True)
class BootFailures:
    queue: str
    failures: int  # machines that failed at boot since the queue's last machine that booted
    seconds_since_last: float  # since the queue's newest launch after its last booted machine


async def boot_failures(conn: Conn, queues: Sequence[str], *, boot_grace_seconds: float) -> list[BootFailures]:
    """The boot failures of each of `queues` (also read by /metrics)."""
    cur = await conn.execute(
        QUERIES["queue_boot_failures"], {"queues": list(queues), "boot_grace_seconds": boot_grace_seconds}
    )
    return [BootFailures(r["queue"], int(r["failures"]), float(r["seconds_since_last"])) for r in await cur.fetchall()]


async def read_boot_failures(conn: Conn, queue: str, *, boot_grace_seconds: float) -> BootFailures:
    [one] = await boot_failures(conn, [queue], boot_grace_seconds=boot_grace_seconds)
    return one


@dataclass
class Scaler:
    settings: Settings
    pool: Pool
    launcher: Launcher
    may_act: Callable[[], bool] = lambda: True  # checked before every launch: still the leader?
    _held_back: dict[str, int] = field(default_factory=dict)  # queue -> failures already logged

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
            if count > 0:
                count = await self._after_boot_failures(demand.queue, count)
            for _ in range(count):
                if not self.may_act() or not await self._launch(demand):
                    break
                launched += 1
        return launched

    async def _after_boot_failures(self, queue: str, count: int) -> int:
        """How many of `count` launches the queue's recent boot failures allow now (0 or 1 after one)."""
        async with self.pool.connection() as conn:
            boot = await read_boot_failures(conn, queue, boot_grace_seconds=self.settings.machine_boot_grace_seconds)
        if boot.failures == 0:
            if self._held_back.pop(queue, None) is not None:
                logger.info("machine launches back to normal", extra={"queue": queue})
            return count
        delay = backoff_delay(
            boot.failures,
            base=self.settings.machine_boot_backoff_seconds,
            cap=self.settings.machine_boot_backoff_max_seconds,
        )
        if boot.seconds_since_last >= delay:
            return 1  # one machine tries; the others wait for its outcome
        if self._held_back.get(queue) != boot.failures:
            self._held_back[queue] = boot.failures
            logger.warning(
                "machine launches backing off",
                extra={
                    "queue": queue,
                    "bootFailures": boot.failures,
                    "delaySeconds": delay,
                    "retryInSeconds": round(delay - boot.seconds_since_last, 1),
                },
            )
        return 0

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
