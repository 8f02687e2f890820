"""Local launcher: each function machine is a subprocess on this host (development and tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO

from shared.settings import Settings

from .base import MACHINE_COMMAND, MachineRef, MachineSpec, MachineStatus

REPO_ROOT = Path(__file__).resolve().parents[2]


class LocalLauncher:
    """Runs `python -m functions.machine` per machine, with the service settings in its env."""

    kind = "local"

    def __init__(self, settings: Settings, *, stop_grace_seconds: float = 5.0) -> None:
        self.settings = settings
        self.stop_grace_seconds = stop_grace_seconds
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._queues: dict[str, str] = {}
        self._logs: dict[str, IO[bytes]] = {}

    async def launch(self, spec: MachineSpec) -> MachineRef:
        machine_id = f"local-{uuid.uuid4().hex[:12]}"
        env = {**os.environ, **self.settings.machine_env(), **spec.env, "MACHINE_ID": machine_id}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        output: IO[bytes] | None = None
        if self.settings.local_machine_log_dir:
            log_dir = Path(self.settings.local_machine_log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            output = open(log_dir / f"{machine_id}.log", "ab")
            self._logs[machine_id] = output
        process = subprocess.Popen(
            [sys.executable, *MACHINE_COMMAND[1:]],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
        self._processes[machine_id] = process
        self._queues[machine_id] = spec.queue
        return MachineRef(id=machine_id, detail={"pid": process.pid})

    def pid(self, machine_id: str) -> int | None:
        process = self._processes.get(machine_id)
        return process.pid if process else None

    async def stop(self, machine_id: str) -> None:
        process = self._processes.get(machine_id)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), self.stop_grace_seconds)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def status(self, machine_id: str) -> MachineStatus:
        process = self._processes.get(machine_id)
        if process is None:
            return MachineStatus(id=machine_id, queue=None, state="exited")
        code = process.poll()
        queue = self._queues.get(machine_id)
        if code is None:
            return MachineStatus(id=machine_id, queue=queue, state="running")
        self._close_log(machine_id)
        # A signal death reads like a shell reports it: 128 + signal number (kill -9 -> 137).
        exit_code = 128 - code if code < 0 else code
        return MachineStatus(id=machine_id, queue=queue, state="exited", exit_code=exit_code, oom_killed=False)

    async def list_machines(self, *, queue: str | None = None) -> list[MachineStatus]:
        statuses = [await self.status(machine_id) for machine_id in list(self._processes)]
        return [s for s in statuses if queue is None or s.queue == queue]

    def forget(self, machine_id: str) -> None:
        """Drop bookkeeping of an exited machine."""
        self._processes.pop(machine_id, None)
        self._queues.pop(machine_id, None)
        self._close_log(machine_id)

    def _close_log(self, machine_id: str) -> None:
        log = self._logs.pop(machine_id, None)
        if log is not None:
            log.close()

    async def aclose(self) -> None:
        """Stop every machine still running (a local machine must not outlive the dispatcher)."""
        await asyncio.gather(*(self.stop(machine_id) for machine_id in list(self._processes)))
        for machine_id in list(self._processes):
            self.forget(machine_id)
