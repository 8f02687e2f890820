"""Fork server ("zygote") of the local launcher: `python -m shared.launchers.forkserver FD GRACE`.

A new function machine spends most of its cold start starting Python and importing psycopg,
pydantic and the engine. This process does that once, then forks one child per launch request,
so each machine is still its own fresh process (own pid, env, asyncio loop and connections) but
skips interpreter start and the common imports. Heavy handlers (images, documents, exports) are
not preloaded: their machines still import Pillow / WeasyPrint after the fork.

Protocol, one JSON message per SOCK_SEQPACKET packet on the socket FD (from LocalLauncher):

- server -> launcher `{"op": "ready", "pid": ...}` once the imports are done;
- launcher -> server `{"op": "launch", "id": n, "env": {...}}`, with the machine's log file
  descriptor attached (SCM_RIGHTS) when its output goes to a file;
- server -> launcher `{"op": "started", "id": n, "pid": ...}` with a pidfd of the child attached,
  so the launcher can signal it without racing pid reuse; `{"op": "failed", "id": n, "error": ...}`
  when fork itself failed;
- server -> launcher `{"op": "exited", "id": n, "status": ...}` (the raw wait status) once the
  server reaped the child: only the parent can read a child's exit status.

The loop is single-threaded and blocking (selectors), with no event loop, so forking is safe.
When the launcher goes away (EOF on the socket, or this process is re-parented) or on SIGTERM,
the server sends SIGTERM to its live machines, reaps them (SIGKILL after GRACE seconds), exits.

A child returns out of `serve()` and `main()` and runs the machine module's `main()` at the top, so
it ends through the normal interpreter exit (`sys.exit`: non-daemon threads joined, atexit run,
streams flushed, an uncaught exception printed with exit code 1), as `python -m <machine module>`.
"""

from __future__ import annotations

import array
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

# What every machine imports before its first job, besides the machine's own module and the
# light functions the launcher names (MachineProgram.preload). Heavy ones (Pillow, WeasyPrint,
# openpyxl) are never preloaded: they would cost every machine memory and this process start time.
PRELOAD: Final = ("asyncio", "psycopg", "psycopg_pool", "pydantic", "pydantic_settings", "shared.settings")
HEAVY_MODULES: Final = ("PIL", "weasyprint", "openpyxl", "pyvips")

MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
# Checked this often in case the launcher died while something else still holds its socket end.
PARENT_CHECK_SECONDS: Final = 1.0
EXIT_BAD_USAGE, EXIT_NOT_SAFE = 2, 3


@dataclass(frozen=True, slots=True)
class ChildLaunch:
    """What a freshly forked child runs once it has left the server's loop: the machine's env."""

    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Child:
    request_id: int
    pid: int


def preload(modules: Iterable[str]) -> None:
    """Import what every machine needs (none of these start a thread; main() checks)."""
    for name in (*PRELOAD, *modules):
        importlib.import_module(name)


def recv_message(sock: socket.socket, *, bufsize: int = MAX_MESSAGE_BYTES) -> tuple[bytes, list[int]]:
    """One packet and the descriptors sent with it (close-on-exec). b"" means the peer is gone."""
    fd_size = array.array("i").itemsize
    data, ancdata, msg_flags, _ = sock.recvmsg(bufsize, socket.CMSG_SPACE(4 * fd_size), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % fd_size])
            fds.extend(received)
    if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise OSError("fork server message truncated")
    return data, fds


def send_message(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    payload = json.dumps(message, separators=(",", ":")).encode()
    socket.send_fds(sock, [payload], fds or [])


def pidfd_signal(pidfd: int, sig: int) -> None:
    """Signal the process behind `pidfd`; nothing when it is already gone. A pidfd never names a
    recycled pid, unlike os.kill after the process was reaped."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass


class _Server:
    def __init__(self, sock: socket.socket, grace_seconds: float, initial_handlers: dict[signal.Signals, Any]) -> None:
        self.sock = sock
        self.grace_seconds = grace_seconds
        self.pid = os.getpid()
        self.parent = os.getppid()
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}  # pidfd -> child
        self.launcher_gone = False
        # The handlers a plain `python -m <machine module>` starts with, restored in each child.
        self.initial_handlers = initial_handlers
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> ChildLaunch | None:
        """Serve launch requests until told to stop (returns None after stopping the machines).
        In a forked child it returns at once, with what the child must run."""
        # (SIGINT is ignored since main() began.) SIGTERM only writes its number to the wake-up
        # pipe; the loop handles it like any event.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.selector.register(self.sock, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "signal")
        try:
            send_message(self.sock, {"op": "ready", "pid": self.pid})
        except (BrokenPipeError, ConnectionResetError):
            # The launcher left while we were importing (its process shutting down): there is
            # nobody to serve, and our stderr is its log, so no traceback either.
            return None
        terminated = False
        while not (self.launcher_gone or terminated):
            for key, _ in self.selector.select(timeout=PARENT_CHECK_SECONDS):
                if key.data == "control":
                    launch = self._on_request()
                    if launch is not None:
                        return launch
                elif key.data == "signal":
                    terminated = signal.SIGTERM in self._drain_wake_pipe()
                else:
                    self._on_child_exit(key.fd)
            # EOF on the socket is the usual sign that the launcher is gone; this also covers a
            # launcher that died while a process it forked (without exec) holds its socket end.
            if os.getppid() != self.parent:
                self.launcher_gone = True
        self._shut_down()
        return None

    def _drain_wake_pipe(self) -> set[int]:
        signals: set[int] = set()
        while True:
            try:
                chunk = os.read(self.wake_r, 512)
            except BlockingIOError:
                return signals
            if not chunk:
                return signals
            signals.update(chunk)

    def _on_request(self) -> ChildLaunch | None:
        try:
            data, fds = recv_message(self.sock)
        except OSError:
            data, fds = b"", []
        if not data:
            self.launcher_gone = True
            return None
        for extra in fds[1:]:
            os.close(extra)
        log_fd = fds[0] if fds else None
        try:
            request = json.loads(data)
            request_id = int(request["id"])
            env = {str(k): str(v) for k, v in request["env"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            if log_fd is not None:
                os.close(log_fd)
            return None  # not from our launcher: nothing to answer
        return self._fork(request_id, env, log_fd)

    def _fork(self, request_id: int, env: dict[str, str], log_fd: int | None) -> ChildLaunch | None:
        if threading.active_count() != 1:
            # A fork while other threads run can leave the child with locks that are never released.
            if log_fd is not None:
                os.close(log_fd)
            self._answer({"op": "failed", "id": request_id, "error": "the fork server has threads"})
            return None
        # Whatever sits in these buffers would otherwise be written twice, by the child as well.
        sys.stdout.flush()
        sys.stderr.flush()
        # Block SIGTERM/SIGINT across the fork: arriving in the child before it resets its
        # handlers, they would run this server's handlers there.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if log_fd is not None:
                os.close(log_fd)
            self._answer({"op": "failed", "id": request_id, "error": f"fork: {exc}"})
            return None
        if pid == 0:
            self._become_child(log_fd, mask)
            return ChildLaunch(env=env)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if log_fd is not None:
            os.close(log_fd)
        pidfd = os.pidfd_open(pid)  # race-free: only this process reaps the child
        self.children[pidfd] = _Child(request_id=request_id, pid=pid)
        self.selector.register(pidfd, selectors.EVENT_READ, "child")
        self._answer({"op": "started", "id": request_id, "pid": pid}, [pidfd])
        return None

    def _become_child(self, log_fd: int | None, mask: Iterable[int]) -> None:
        """Drop everything of the server's: the machine must hold none of its descriptors (else
        the launcher would not see EOF when the server dies) nor its signal handling."""
        signal.set_wakeup_fd(-1)
        for sig, handler in self.initial_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.selector.close()
        self.sock.close()
        for pidfd in self.children:
            os.close(pidfd)
        self.children.clear()
        os.close(self.wake_r)
        os.close(self.wake_w)
        if log_fd is not None:
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)

    def _on_child_exit(self, pidfd: int) -> None:
        child = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(child.pid, 0)
        self._answer({"op": "exited", "id": child.request_id, "status": status})

    def _answer(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.launcher_gone:
            return
        try:
            send_message(self.sock, message, fds)
        except OSError:
            self.launcher_gone = True

    def _shut_down(self) -> None:
        """Stop the machines as LocalLauncher.stop does (SIGTERM, SIGKILL after the grace period)
        and reap them, so none outlives the launcher."""
        self.selector.unregister(self.sock)
        for pidfd in self.children:
            pidfd_signal(pidfd, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        killed = False
        while self.children:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not killed:
                for pidfd in self.children:
                    pidfd_signal(pidfd, signal.SIGKILL)
                killed = True
            for key, _ in self.selector.select(timeout=1.0 if killed else remaining):
                if key.data == "child":
                    self._on_child_exit(key.fd)
                else:
                    self._drain_wake_pipe()


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        usage = "usage: python -m shared.launchers.forkserver FD GRACE_SECONDS MACHINE_MODULE [PRELOAD ...]"
        print(usage, file=sys.stderr)
        return EXIT_BAD_USAGE
    # Ctrl-C reaches the whole process group: the machines shut down on it by themselves, and this
    # process must outlive them to report their exit status; while it imports, a KeyboardInterrupt
    # would put a traceback in the launcher's log. So it is ignored from here on; the machines get
    # back the handlers a plain `python -m` starts with.
    initial_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    sock.set_inheritable(False)
    grace_seconds = float(argv[2])
    machine_module = argv[3]
    preload([machine_module, *argv[4:]])
    heavy = [name for name in HEAVY_MODULES if name in sys.modules]
    if heavy or threading.active_count() != 1:
        threads = threading.active_count()
        print(f"fork server: not safe to fork (heavy modules {heavy}, {threads} threads)", file=sys.stderr)
        return EXIT_NOT_SAFE
    # Freeze what the imports made: children then neither copy these pages by touching GC headers
    # nor walk these objects in their collections. Collect first so no garbage is frozen with it.
    gc.collect()
    gc.freeze()
    launch = _Server(sock, grace_seconds, initial_handlers).serve()
    if launch is None:
        return 0
    return run_machine(launch, machine_module)


def run_machine(launch: ChildLaunch, machine_module: str) -> int:
    """In the forked child: become the machine (`machine_module.main()`); returns its exit code."""
    os.environ.clear()  # putenv/unsetenv too, so libpq and other C code see the machine's env
    os.environ.update(launch.env)
    machine = importlib.import_module(machine_module)
    sys.argv = [machine.__file__ or machine_module]  # as `python -m <machine_module>` has it
    return int(machine.main())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
