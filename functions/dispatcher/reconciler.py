"""Reconciler: keep the `machines` table in step with what the launcher reports.

It never dies of one answer (issue 10): a launcher error is caught, counted in `errors` by kind
and logged, and the tick goes on with the next machine; a rejected token (the launcher raises
its own alert, see shared/launchers/fly_alerts.py) ends the tick, since every further call
would be rejected too. One `list_machines()` call covers every machine it lists; only the rows
it leaves out are asked about one by one. Machines the launcher reports as left behind are
stopped (the Fly launcher destroys them) and counted in `leftovers_destroyed`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from shared.db import job_store
from shared.db.models import MachineRecord
from shared.db.pool import Pool
from shared.errors import LauncherError, LauncherRejected, LauncherUnauthorized
from shared.launchers import Launcher, MachineStatus
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

logger = logging.getLogger("functions.dispatcher.reconciler")


@dataclass
class Reconciler:
    pool: Pool
    launcher: Launcher
    errors: Counter[str] = field(default_factory=Counter)  # launcher errors by kind: unavailable, rejected, auth
    leftovers_destroyed: int = 0

    async def run_once(self) -> int:
        """Mark machines that exited (with exit code and OOM) or started; returns how many exited."""
        async with self.pool.connection() as conn:
            live = [m for m in await job_store.live_machines(conn) if m.launcher == self.launcher.kind]
        try:
            listed = {status.id: status for status in await self.launcher.list_machines()}
        except LauncherError as exc:
            # Fly is struggling (or refuses us): asking once per machine would only add load.
            self._count(exc, "list")
            return 0
        exited = 0
        for machine in live:
            status = listed.get(machine.id)
            if status is None:
                try:
                    status = await self.launcher.status(machine.id)
                except LauncherError as exc:
                    if self._count(exc, "status", machine.id) == "auth":
                        break
                    continue
            if await self._apply(machine, status):
                exited += 1
        await self._destroy_leftovers([s for s in listed.values() if s.leftover])
        return exited

    async def _apply(self, machine: MachineRecord, status: MachineStatus) -> bool:
        """Record what the launcher says of one machine; True when it is newly over."""
        async with self.pool.connection() as conn:
            if status.state in ("exited", "failed"):
                if not await job_store.machine_exited(
                    conn,
                    machine.id,
                    exit_code=status.exit_code,
                    oom_killed=status.oom_killed,
                    failed=status.state == "failed",
                ):
                    return False
                level = logging.INFO if status.exit_code == 0 else logging.WARNING
                logger.log(
                    level,
                    "machine exited",
                    extra={"machineId": machine.id, "exitCode": status.exit_code, "oom": status.oom_killed},
                )
                return True
            if status.state == "running" and machine.state == "launching":
                await job_store.machine_started(conn, machine.id)
        return False

    async def _destroy_leftovers(self, leftovers: list[MachineStatus]) -> None:
        for status in leftovers:
            try:
                await self.launcher.stop(status.id)
            except LauncherError as exc:
                if self._count(exc, "destroy leftover", status.id) == "auth":
                    return
                continue
            self.leftovers_destroyed += 1
            logger.warning("machine left behind destroyed", extra={"machineId": status.id, "state": status.state})

    def _count(self, exc: LauncherError, operation: str, machine_id: str | None = None) -> str:
        kind = "unavailable"
        if isinstance(exc, LauncherUnauthorized):
            kind = "auth"
        elif isinstance(exc, LauncherRejected):
            kind = "rejected"
        self.errors[kind] += 1
        extra = {"operation": operation, "machineId": machine_id, "error": str(exc)}
        logger.warning("reconciler: launcher call failed", extra=extra)
        if kind != "unavailable":
            emit(EventName.PLUGIN_ERROR, plugin="reconciler", operation=operation, error=str(exc))
        return kind
