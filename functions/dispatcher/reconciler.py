"""Reconciler: keep the `machines` table in step with what the launcher reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.db import job_store
from shared.db.pool import Pool
from shared.launchers import Launcher

logger = logging.getLogger("functions.dispatcher.reconciler")


@dataclass
class Reconciler:
    pool: Pool
    launcher: Launcher

    async def run_once(self) -> int:
        """Mark machines that exited (with exit code and OOM) or started; returns how many exited."""
        async with self.pool.connection() as conn:
            live = await job_store.live_machines(conn)
        exited = 0
        for machine in live:
            if machine.launcher != self.launcher.kind:
                continue
            status = await self.launcher.status(machine.id)
            async with self.pool.connection() as conn:
                if status.state in ("exited", "failed"):
                    if await job_store.machine_exited(
                        conn,
                        machine.id,
                        exit_code=status.exit_code,
                        oom_killed=status.oom_killed,
                        failed=status.state == "failed",
                    ):
                        exited += 1
                        level = logging.INFO if status.exit_code == 0 else logging.WARNING
                        logger.log(
                            level,
                            "machine exited",
                            extra={"machineId": machine.id, "exitCode": status.exit_code, "oom": status.oom_killed},
                        )
                elif status.state == "running" and machine.state == "launching":
                    await job_store.machine_started(conn, machine.id)
        return exited
