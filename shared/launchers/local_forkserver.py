"""The local launcher's side of one fork server process (shared/launchers/forkserver.py) and its
control socket: start it, ask it to fork machines, and read the exit statuses it reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .base import MachineProgram
from .forkserver import pidfd_signal, recv_message, send_message

REPO_ROOT = Path(__file__).resolve().parents[2]

# The first launch waits for the server's imports (about what a plain start costs); a server not
# ready by then is treated as failed. A fork answers in milliseconds; a slower answer sends that
# one launch down the plain path.
READY_TIMEOUT_SECONDS: Final = 30.0
FORK_TIMEOUT_SECONDS: Final = 5.0
KILL_WAIT_SECONDS: Final = 10.0


def fork_server_supported() -> bool:
    """pidfds (Linux 5.3+) make the fork server's machines safe to signal from here."""
    if not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # ENOSYS on old kernels, EPERM under some seccomp profiles
        return False
    return True


def pidfd_exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class ForkServerUnavailable(Exception):
    """This launch cannot use the fork server; it takes the plain path instead."""


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    pidfd: int


class ForkServer:
    """The launcher's side of one fork server process and its control socket."""

    def __init__(self, env: dict[str, str], *, program: MachineProgram, stop_grace_seconds: float) -> None:
        self.sock, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shared.launchers.forkserver",
                    str(server_end.fileno()),
                    str(stop_grace_seconds),
                    program.module,
                    *program.preload,
                ],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(server_end.fileno(),),
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            server_end.close()
        self.sock.setblocking(False)
        self.stop_grace_seconds = stop_grace_seconds
        self.ready = False
        self.dead = False
        self._next_id = 0
        self._replies: dict[int, Started | str] = {}
        self.exits: dict[int, int] = {}  # request id -> raw wait status, until the launcher takes it
        self._abandoned: set[int] = set()  # launches given up (timed out, cancelled): stopped, not tracked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> None:
        """Take in every message the server has sent (never blocks)."""
        while not self.dead:
            try:
                data, fds = recv_message(self.sock, bufsize=65536)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._die()
                return
            try:
                message = json.loads(data)
            except ValueError:
                message = None
            if not isinstance(message, dict):  # not our server speaking: stop trusting it
                for fd in fds:
                    os.close(fd)
                self._die()
                return
            self._handle(message, fds)

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op, request_id = message.get("op"), message.get("id")
        if op == "ready":
            self.ready = True
        elif op == "started" and isinstance(request_id, int) and fds:
            pidfd, fds = fds[0], fds[1:]
            if request_id in self._abandoned:
                # Its launch already went down the plain path: this twin must not run too.
                pidfd_signal(pidfd, signal.SIGTERM)
                os.close(pidfd)
            else:
                self._replies[request_id] = Started(pid=int(message["pid"]), pidfd=pidfd)
        elif op == "failed" and isinstance(request_id, int):
            self._replies[request_id] = str(message.get("error"))
        elif op == "exited" and isinstance(request_id, int):
            if request_id in self._abandoned:
                self._abandoned.discard(request_id)
            else:
                self.exits[request_id] = int(message["status"])
        for fd in fds:
            os.close(fd)

    def _die(self) -> None:
        self.dead = True
        self._unwatch()
        self.sock.close()
        self._wake_waiters()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read messages as they come on this loop, waking whoever waits for one."""
        if self._loop is loop or self.dead:
            return
        self._unwatch()
        loop.add_reader(self.sock.fileno(), self._on_readable)
        self._loop = loop

    def _unwatch(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):  # the loop may be closed by now
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def _on_readable(self) -> None:
        self.poll()
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (without blocking the loop) until `predicate` holds, the server dies or time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.poll()
            if predicate():
                return True
            remaining = deadline - loop.time()
            if self.dead or remaining <= 0:
                return False
            self._watch(loop)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait([waiter], timeout=remaining)
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def wait_ready(self) -> bool:
        return await self.wait_until(lambda: self.ready, READY_TIMEOUT_SECONDS)

    async def fork(self, env: dict[str, str], log_fd: int | None) -> tuple[int, Started]:
        """Have the server fork a machine with `env`; its output goes to `log_fd` if given.
        Returns the request id (which names the machine in exit reports) and its pid and pidfd."""
        if self.dead:
            raise ForkServerUnavailable("the fork server is gone")
        request_id = self._next_id
        self._next_id += 1
        try:
            send_message(self.sock, {"op": "launch", "id": request_id, "env": env}, [] if log_fd is None else [log_fd])
        except BlockingIOError as exc:  # its socket buffer is full: it is not keeping up
            raise ForkServerUnavailable("the fork server is not reading") from exc
        except OSError as exc:  # EMSGSIZE for a huge env; EPIPE / ECONNRESET when it died
            self.poll()
            raise ForkServerUnavailable(f"could not send to the fork server: {exc}") from exc
        try:
            answered = await self.wait_until(lambda: request_id in self._replies, FORK_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            self._abandon(request_id)
            raise
        if not answered:
            self._abandon(request_id)
            raise ForkServerUnavailable("the fork server did not answer")
        reply = self._replies.pop(request_id)
        if isinstance(reply, str):
            raise ForkServerUnavailable(reply)
        return request_id, reply

    def _abandon(self, request_id: int) -> None:
        """Nobody will track this launch's machine: stop it now, or as soon as it starts."""
        reply = self._replies.pop(request_id, None)
        if isinstance(reply, Started):
            pidfd_signal(reply.pidfd, signal.SIGTERM)
            os.close(reply.pidfd)
        if reply is None or isinstance(reply, Started):
            self._abandoned.add(request_id)  # its start and exit reports are dropped

    async def aclose(self) -> None:
        """Close the socket (the server stops its remaining machines and exits) and wait for it."""
        if not self.dead:
            self.poll()
        if not self.dead:
            self._die()
        for reply in self._replies.values():
            if isinstance(reply, Started):
                os.close(reply.pidfd)
        self._replies.clear()
        deadline = time.monotonic() + self.stop_grace_seconds + KILL_WAIT_SECONDS
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
                break
            await asyncio.sleep(0.01)
