"""Local launcher: each function machine is a process on this host (development and tests).

Machines are forked from a fork server (`shared/launchers/forkserver.py`) that has already
started Python and imported the engine, which takes most of a cold start away; each is still a
fresh process of its own (own pid, env, event loop, connections). The server starts on the first
launch. When it cannot (no pidfd support, LOCAL_LAUNCHER_FORK=0, it failed or died), machines
run as before: `python -m <machine module>` in a subprocess. The two kinds live in
local_machines.py; this module only decides which to start and keeps the book.

Either way `detail["pid"]` is the machine's pid, `stop` sends it SIGTERM (SIGKILL after the
grace period) and a death by signal reads as 128 + the signal (kill -9 -> 137).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.settings import Settings

from .base import MachineProgram, MachineRef, MachineSpec, MachineStatus
from .local_forkserver import REPO_ROOT, ForkServer, ForkServerUnavailable, fork_server_supported
from .local_machines import ForkedMachine, LocalMachine, PlainMachine

__all__ = ["REPO_ROOT", "LocalLauncher", "fork_server_supported"]

logger = logging.getLogger("shared.launchers.local")


def _python_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env


@dataclass(slots=True)
class _Entry:
    queue: str
    machine: LocalMachine


class LocalLauncher:
    """Runs one process per machine, with the service settings in its env."""

    kind = "local"

    def __init__(
        self, settings: Settings, *, program: MachineProgram, stop_grace_seconds: float = 5.0, fork: bool | None = None
    ) -> None:
        """Machines run `program`. `fork`: use the fork server (default: the LOCAL_LAUNCHER_FORK setting)."""
        self.settings = settings
        self.program = program
        self.stop_grace_seconds = stop_grace_seconds
        if fork is None:
            fork = settings.local_launcher_fork
        self._fork = fork and fork_server_supported()
        self._server: ForkServer | None = None
        self._server_failed = False
        self._machines: dict[str, _Entry] = {}

    @property
    def fork_server_pid(self) -> int | None:
        """The fork server's pid while it serves launches (None: machines are plain subprocesses)."""
        server = self._server
        if server is None or server.dead or self._server_failed:
            return None
        return server.pid

    async def launch(self, spec: MachineSpec) -> MachineRef:
        machine_id = f"local-{uuid.uuid4().hex[:12]}"
        env = _python_env({**os.environ, **self.settings.machine_env(), **spec.env, "MACHINE_ID": machine_id})
        log_path: Path | None = None
        if self.settings.local_machine_log_dir:
            log_dir = Path(self.settings.local_machine_log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{machine_id}.log"
        machine = await self._forked(env, log_path) or self._plain(env, log_path)
        self._machines[machine_id] = _Entry(queue=spec.queue, machine=machine)
        return MachineRef(id=machine_id, detail={"pid": machine.pid})

    async def _forked(self, env: dict[str, str], log_path: Path | None) -> ForkedMachine | None:
        """A machine forked by the fork server, or None when this launch takes the plain path."""
        server = await self._ready_server()
        if server is None:
            return None
        log_fd = None if log_path is None else os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            request_id, started = await server.fork(env, log_fd)
        except ForkServerUnavailable as exc:
            logger.warning("fork server launch failed; starting the machine as a subprocess", extra={"error": str(exc)})
            return None
        finally:
            if log_fd is not None:
                os.close(log_fd)  # the child has its own copy
        return ForkedMachine(request_id=request_id, pid=started.pid, pidfd=started.pidfd, server=server)

    def _plain(self, env: dict[str, str], log_path: Path | None) -> PlainMachine:
        output: IO[bytes] | None = open(log_path, "ab") if log_path is not None else None
        process = subprocess.Popen(
            [sys.executable, *self.program.command[1:]],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
        return PlainMachine(process=process, log=output)

    async def _ready_server(self) -> ForkServer | None:
        """The fork server, started on first use; None when machines must take the plain path."""
        if not self._fork or self._server_failed:
            return None
        if self._server is None:
            try:
                self._server = ForkServer(
                    _python_env({**os.environ, **self.settings.machine_env()}),
                    program=self.program,
                    stop_grace_seconds=self.stop_grace_seconds,
                )
            except OSError as exc:
                logger.warning("could not start the fork server", extra={"error": str(exc)})
                self._server_failed = True
                return None
        server = self._server
        if not server.ready and not await server.wait_ready():
            self._fail_server("the fork server did not become ready")
            return None
        if server.dead:
            self._fail_server("the fork server exited")
            return None
        return server

    def _fail_server(self, why: str) -> None:
        # Machines it started keep running and are still tracked through their pidfds; new ones
        # take the plain path from now on.
        logger.warning("%s; starting machines as subprocesses from now on", why)
        self._server_failed = True
        server = self._server
        if server is not None and server.process.poll() is None and not server.ready:
            server.process.kill()

    def pid(self, machine_id: str) -> int | None:
        entry = self._machines.get(machine_id)
        return entry.machine.pid if entry else None

    async def stop(self, machine_id: str) -> None:
        entry = self._machines.get(machine_id)
        if entry is not None:
            await entry.machine.stop(self.stop_grace_seconds)

    async def status(self, machine_id: str) -> MachineStatus:
        entry = self._machines.get(machine_id)
        if entry is None:
            return MachineStatus(id=machine_id, queue=None, state="exited")
        exited, code = entry.machine.exit_code()
        if not exited:
            return MachineStatus(id=machine_id, queue=entry.queue, state="running")
        return MachineStatus(id=machine_id, queue=entry.queue, state="exited", exit_code=code)

    async def list_machines(self, *, queue: str | None = None) -> list[MachineStatus]:
        statuses = [await self.status(machine_id) for machine_id in list(self._machines)]
        return [s for s in statuses if queue is None or s.queue == queue]

    def forget(self, machine_id: str) -> None:
        """Drop bookkeeping of an exited machine."""
        entry = self._machines.pop(machine_id, None)
        if entry is not None:
            entry.machine.close()

    async def aclose(self) -> None:
        """Stop every machine still running (a local machine must not outlive the dispatcher),
        then the fork server."""
        await asyncio.gather(*(self.stop(machine_id) for machine_id in list(self._machines)))
        for machine_id in list(self._machines):
            self.forget(machine_id)
        if self._server is not None:
            await self._server.aclose()
            self._server = None
