"""The two kinds of local machine: one forked by the fork server, one started as a subprocess.

Both answer the same four questions (pid, status, stop, close), so the launcher never asks which
kind it holds. A death by signal reads as a shell reports it: 128 + the signal (kill -9 -> 137).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import IO, Protocol

from .forkserver import pidfd_signal
from .local_forkserver import KILL_WAIT_SECONDS, ForkServer, pidfd_exited


def shell_exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class LocalMachine(Protocol):
    @property
    def pid(self) -> int: ...

    def exit_code(self) -> tuple[bool, int | None]:
        """(exited, exit code when known)."""
        ...

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM, SIGKILL after `grace_seconds`; nothing when it already exited."""
        ...

    def close(self) -> None:
        """Release what the launcher holds for it (descriptors, log file)."""
        ...


@dataclass(slots=True)
class ForkedMachine:
    """A child of the fork server: signalled through its pidfd (never a recycled pid), its exit
    status reported by the server."""

    request_id: int
    pid: int
    pidfd: int | None  # closed (None) once the exit is known
    server: ForkServer
    done: bool = False
    code: int | None = None

    def exit_code(self) -> tuple[bool, int | None]:
        self._refresh()
        return self.done, self.code

    def _refresh(self) -> None:
        if self.done:
            return
        server = self.server
        server.poll()
        status = server.exits.pop(self.request_id, None)
        if status is not None:
            self.code = shell_exit_code(os.waitstatus_to_exitcode(status))
        elif not (server.dead and self.pidfd is not None and pidfd_exited(self.pidfd)):
            return
        # else: the server died before reporting (it reaped nothing after): the status is lost.
        self.done = True
        self.close()

    async def _wait_exit(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        server = self.server

        def reported() -> bool:
            return self.request_id in server.exits or server.dead

        while True:
            self._refresh()
            remaining = deadline - loop.time()
            if self.done or remaining <= 0:
                return self.done
            if server.dead:  # no exit report will come: watch the pidfd instead
                await asyncio.sleep(min(0.05, remaining))
            else:
                await server.wait_until(reported, remaining)

    async def stop(self, grace_seconds: float) -> None:
        self._refresh()
        if self.done or self.pidfd is None:
            return
        pidfd_signal(self.pidfd, signal.SIGTERM)
        if await self._wait_exit(grace_seconds):
            return
        if self.pidfd is not None:
            pidfd_signal(self.pidfd, signal.SIGKILL)
        await self._wait_exit(KILL_WAIT_SECONDS)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


@dataclass(slots=True)
class PlainMachine:
    """`python -m <machine module>` in a subprocess of the launcher."""

    process: subprocess.Popen[bytes]
    log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> tuple[bool, int | None]:
        code = self.process.poll()
        if code is None:
            return False, None
        self.close()
        return True, shell_exit_code(code)

    async def stop(self, grace_seconds: float) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), grace_seconds)
        except TimeoutError:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
