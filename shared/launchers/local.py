"""Local launcher: each function machine is a process on this host (development and tests).

Machines are forked from a fork server (`shared/launchers/forkserver.py`) that has already
started Python and imported the engine, which takes most of a cold start away; each is still a
fresh process of its own (own pid, env, event loop, connections). The server starts on the first
launch. When it cannot (no pidfd support, LOCAL_LAUNCHER_FORK=0, it failed or died), machines
run as before: `python -m <machine module>` in a subprocess.

Either way `detail["pid"]` is the machine's pid, `stop` sends it SIGTERM (SIGKILL after the
grace period) and a death by signal reads as 128 + the signal (kill -9 -> 137). A forked machine
is the fork server's child, so the server reports its exit status; the launcher holds a pidfd of
it, so signalling it can never hit a recycled pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from shared.settings import Settings

from .base import MachineProgram, MachineRef, MachineSpec, MachineStatus
from .forkserver import pidfd_signal, recv_message, send_message

REPO_ROOT = Path(__file__).resolve().parents[2]

# The first launch waits for the server's imports (about what a plain start costs); a server not
# ready by then is treated as failed. A fork answers in milliseconds; a slower answer sends that
# one launch down the plain path.
READY_TIMEOUT_SECONDS: Final = 30.0
FORK_TIMEOUT_SECONDS: Final = 5.0
KILL_WAIT_SECONDS: Final = 10.0

logger = logging.getLogger("shared.launchers.local")


def fork_server_supported() -> bool:
    """pidfds (Linux 5.3+) make the fork server's machines safe to signal from here."""
    if not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # ENOSYS on old kernels, EPERM under some seccomp profiles
        return False
    return True


def _python_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _shell_exit_code(returncode: int) -> int:
    # A signal death reads like a shell reports it: 128 + signal number (kill -9 -> 137).
    return 128 - returncode if returncode < 0 else returncode


def _pidfd_exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class ForkServerUnavailable(Exception):
    """This launch cannot use the fork server; it takes the plain path instead."""


@dataclass(frozen=True, slots=True)
class _Started:
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
        self._replies: dict[int, _Started | str] = {}
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
                self._replies[request_id] = _Started(pid=int(message["pid"]), pidfd=pidfd)
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

    async def fork(self, env: dict[str, str], log_fd: int | None) -> tuple[int, _Started]:
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
        if isinstance(reply, _Started):
            pidfd_signal(reply.pidfd, signal.SIGTERM)
            os.close(reply.pidfd)
        if reply is None or isinstance(reply, _Started):
            self._abandoned.add(request_id)  # its start and exit reports are dropped

    async def aclose(self) -> None:
        """Close the socket (the server stops its remaining machines and exits) and wait for it."""
        if not self.dead:
            self.poll()
        if not self.dead:
            self._die()
        for reply in self._replies.values():
            if isinstance(reply, _Started):
                os.close(reply.pidfd)
        self._replies.clear()
        deadline = time.monotonic() + self.stop_grace_seconds + KILL_WAIT_SECONDS
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
                break
            await asyncio.sleep(0.01)


@dataclass(slots=True)
class _ForkedMachine:
    request_id: int
    pid: int
    pidfd: int | None  # closed (None) once the exit is known
    server: ForkServer
    done: bool = False
    exit_code: int | None = None


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
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._forked: dict[str, _ForkedMachine] = {}
        self._queues: dict[str, str] = {}
        self._logs: dict[str, IO[bytes]] = {}

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
        server = await self._ready_server()
        if server is not None:
            log_fd = None if log_path is None else os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                request_id, started = await server.fork(env, log_fd)
            except ForkServerUnavailable as exc:
                logger.warning(
                    "fork server launch failed; starting the machine as a subprocess", extra={"error": str(exc)}
                )
            else:
                self._forked[machine_id] = _ForkedMachine(
                    request_id=request_id, pid=started.pid, pidfd=started.pidfd, server=server
                )
                self._queues[machine_id] = spec.queue
                return MachineRef(id=machine_id, detail={"pid": started.pid})
            finally:
                if log_fd is not None:
                    os.close(log_fd)  # the child has its own copy
        output: IO[bytes] | None = None
        if log_path is not None:
            output = open(log_path, "ab")
            self._logs[machine_id] = output
        process = subprocess.Popen(
            [sys.executable, *self.program.command[1:]],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
        self._processes[machine_id] = process
        self._queues[machine_id] = spec.queue
        return MachineRef(id=machine_id, detail={"pid": process.pid})

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
        forked = self._forked.get(machine_id)
        if forked is not None:
            return forked.pid
        process = self._processes.get(machine_id)
        return process.pid if process else None

    def _refresh(self, machine: _ForkedMachine) -> None:
        """Learn whether a forked machine exited, and its exit status."""
        if machine.done:
            return
        server = machine.server
        server.poll()
        status = server.exits.pop(machine.request_id, None)
        if status is not None:
            machine.exit_code = _shell_exit_code(os.waitstatus_to_exitcode(status))
        elif not (server.dead and machine.pidfd is not None and _pidfd_exited(machine.pidfd)):
            return
        # else: the server died before reporting (it reaped nothing after): the status is lost.
        machine.done = True
        if machine.pidfd is not None:
            os.close(machine.pidfd)
            machine.pidfd = None

    async def _wait_exit(self, machine: _ForkedMachine, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        server = machine.server

        def reported() -> bool:
            return machine.request_id in server.exits or server.dead

        while True:
            self._refresh(machine)
            remaining = deadline - loop.time()
            if machine.done or remaining <= 0:
                return machine.done
            if server.dead:  # no exit report will come: watch the pidfd instead
                await asyncio.sleep(min(0.05, remaining))
            else:
                await server.wait_until(reported, remaining)

    async def stop(self, machine_id: str) -> None:
        forked = self._forked.get(machine_id)
        if forked is not None:
            await self._stop_forked(forked)
            return
        process = self._processes.get(machine_id)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), self.stop_grace_seconds)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def _stop_forked(self, machine: _ForkedMachine) -> None:
        self._refresh(machine)
        if machine.done or machine.pidfd is None:
            return
        pidfd_signal(machine.pidfd, signal.SIGTERM)
        if await self._wait_exit(machine, self.stop_grace_seconds):
            return
        if machine.pidfd is not None:
            pidfd_signal(machine.pidfd, signal.SIGKILL)
        await self._wait_exit(machine, KILL_WAIT_SECONDS)

    async def status(self, machine_id: str) -> MachineStatus:
        queue = self._queues.get(machine_id)
        forked = self._forked.get(machine_id)
        if forked is not None:
            self._refresh(forked)
            if not forked.done:
                return MachineStatus(id=machine_id, queue=queue, state="running")
            return MachineStatus(id=machine_id, queue=queue, state="exited", exit_code=forked.exit_code)
        process = self._processes.get(machine_id)
        if process is None:
            return MachineStatus(id=machine_id, queue=None, state="exited")
        code = process.poll()
        if code is None:
            return MachineStatus(id=machine_id, queue=queue, state="running")
        self._close_log(machine_id)
        return MachineStatus(id=machine_id, queue=queue, state="exited", exit_code=_shell_exit_code(code))

    async def list_machines(self, *, queue: str | None = None) -> list[MachineStatus]:
        statuses = [await self.status(machine_id) for machine_id in list(self._queues)]
        return [s for s in statuses if queue is None or s.queue == queue]

    def forget(self, machine_id: str) -> None:
        """Drop bookkeeping of an exited machine."""
        self._processes.pop(machine_id, None)
        self._queues.pop(machine_id, None)
        forked = self._forked.pop(machine_id, None)
        if forked is not None and forked.pidfd is not None:
            os.close(forked.pidfd)
            forked.pidfd = None
        self._close_log(machine_id)

    def _close_log(self, machine_id: str) -> None:
        log = self._logs.pop(machine_id, None)
        if log is not None:
            log.close()

    async def aclose(self) -> None:
        """Stop every machine still running (a local machine must not outlive the dispatcher),
        then the fork server."""
        await asyncio.gather(*(self.stop(machine_id) for machine_id in list(self._queues)))
        for machine_id in list(self._queues):
            self.forget(machine_id)
        if self._server is not None:
            await self._server.aclose()
            self._server = None
