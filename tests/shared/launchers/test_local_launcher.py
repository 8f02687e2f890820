"""LocalLauncher with its fork server: real machine processes against the real Postgres fixture.

Processes are inspected through /proc: parentage, environment, open descriptors, mapped files.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from functions.registry import machine_program
from shared.launchers.base import MachineRef, MachineSpec, MachineStatus
from shared.launchers.local import REPO_ROOT, LocalLauncher, fork_server_supported
from shared.settings import Settings

pytestmark = pytest.mark.skipif(not fork_server_supported(), reason="needs pidfd (Linux 5.3+)")

WAIT_SECONDS = 60.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...


def _ppid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == pid and _alive(int(entry)):
            found.append(int(entry))
    return found


def _fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
    return targets


async def _wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _exited(launcher: LocalLauncher, machine_id: str) -> MachineStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while (status := await launcher.status(machine_id)).state != "exited":
        if loop.time() > deadline:
            raise TimeoutError(f"machine {machine_id} still {status.state}")
        await asyncio.sleep(0.05)
    return status


def _spec(queue: str = "default", **env: str) -> MachineSpec:
    """An idle machine that stays up (nothing to claim, a minute of idling) until stopped."""
    contract = {
        "JOB_QUEUE": queue,
        "MACHINE_MAX_JOBS": "1",
        "MACHINE_IDLE_SECONDS": "60",
        "MACHINE_CONCURRENCY": "1",
        **env,
    }
    return MachineSpec(queue=queue, job_id=None, env=contract)


def _log(log_dir: Path, ref: MachineRef) -> str:
    path = log_dir / f"{ref.id}.log"
    return path.read_text() if path.exists() else ""


async def _booted(log_dir: Path, ref: MachineRef) -> None:
    """The machine loaded its settings, opened its pool and entered its loop."""
    await _wait_for(lambda: "queue:start" in _log(log_dir, ref), f"machine {ref.id} to boot")


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "machine-logs"


@pytest.fixture
async def launcher(settings: Settings, log_dir: Path) -> AsyncIterator[LocalLauncher]:
    launcher = LocalLauncher(
        program=machine_program(),
        settings=settings.model_copy(update={"local_machine_log_dir": str(log_dir)}),
        fork=True,
    )
    try:
        yield launcher
    finally:
        await launcher.aclose()


def _pid(ref: MachineRef) -> int:
    pid = ref.detail["pid"]
    assert isinstance(pid, int)
    return pid


async def test_machines_are_forked_children_of_the_fork_server_with_their_own_env(
    launcher: LocalLauncher, log_dir: Path
) -> None:
    first = await launcher.launch(_spec())
    second = await launcher.launch(_spec(MACHINE_IDLE_SECONDS="0"))
    server = launcher.fork_server_pid
    assert server is not None and server != os.getpid()
    assert _pid(first) != _pid(second)
    assert _ppid(_pid(first)) == server and _ppid(_pid(second)) == server
    await _booted(log_dir, first)
    # Each runs with the env of its own request (set after the fork, so /proc/<pid>/environ,
    # which shows the env a process was exec'd with, would show the server's).
    second_status = await _exited(launcher, second.id)
    assert second_status.exit_code == 0 and "machine idle, exiting" in _log(log_dir, second)
    for ref in (first, second):
        lines = [json.loads(line) for line in _log(log_dir, ref).splitlines()]
        started = next(line for line in lines if line["message"] == "queue:start")
        assert (started["machineId"], started["queue"]) == (ref.id, "default")
    assert (await launcher.status(first.id)).state == "running"
    await launcher.stop(first.id)
    status = await launcher.status(first.id)
    assert (status.state, status.exit_code, status.queue) == ("exited", 0, "default")
    assert "machine stopping" in _log(log_dir, first)


async def test_kill_9_of_a_forked_machine_reads_137(launcher: LocalLauncher, log_dir: Path) -> None:
    ref = await launcher.launch(_spec())
    await _booted(log_dir, ref)
    os.kill(_pid(ref), signal.SIGKILL)
    status = await _exited(launcher, ref.id)
    assert status.exit_code == 137


async def test_bad_configuration_exits_2_with_its_output_in_the_machine_log(
    launcher: LocalLauncher, log_dir: Path
) -> None:
    ref = await launcher.launch(_spec(queue="no-such-queue"))
    assert _ppid(_pid(ref)) == launcher.fork_server_pid
    status = await _exited(launcher, ref.id)
    assert status.exit_code == 2
    assert "bad machine configuration" in _log(log_dir, ref)


async def test_stop_escalates_to_sigkill_after_the_grace_period(settings: Settings, log_dir: Path) -> None:
    launcher = LocalLauncher(
        program=machine_program(),
        settings=settings.model_copy(update={"local_machine_log_dir": str(log_dir)}),
        stop_grace_seconds=0.5,
        fork=True,
    )
    try:
        ref = await launcher.launch(_spec())
        await _booted(log_dir, ref)
        os.kill(_pid(ref), signal.SIGSTOP)  # it cannot act on SIGTERM now; SIGKILL still ends it
        await launcher.stop(ref.id)
        status = await launcher.status(ref.id)
        assert (status.state, status.exit_code) == ("exited", 137)
    finally:
        await launcher.aclose()


async def test_a_heavy_handler_is_imported_in_its_machine_not_in_the_fork_server(
    launcher: LocalLauncher, log_dir: Path
) -> None:
    ref = await launcher.launch(_spec(queue="images"))
    await _booted(log_dir, ref)
    server = launcher.fork_server_pid
    assert server is not None and _ppid(_pid(ref)) == server
    # The images machine loads Pillow while it warms up, after it booted.
    await _wait_for(lambda: "/PIL/" in Path(f"/proc/{_pid(ref)}/maps").read_text(), "Pillow in the images machine")
    assert "/PIL/" not in Path(f"/proc/{server}/maps").read_text()


async def test_a_machine_holds_no_descriptor_of_the_fork_server(launcher: LocalLauncher, log_dir: Path) -> None:
    older = await launcher.launch(_spec())
    ref = await launcher.launch(_spec())  # forked while the server held a pidfd of `older`
    await _booted(log_dir, ref)
    server = launcher.fork_server_pid
    assert server is not None
    server_fds = _fd_targets(server)
    machine_fds = _fd_targets(_pid(ref))
    # Sockets and pipes are named by inode: none of the server's may be open in the machine,
    # except 0-2, which it shares on purpose (stdin /dev/null, the launcher's stdout/stderr).
    # Anonymous inodes (epoll, pidfd) all share one name, so pidfds are checked by kind: the
    # machine opens none itself.
    shared_std = {server_fds.get(fd) for fd in (0, 1, 2)}
    named = {target for target in server_fds.values() if not target.startswith("anon_inode:")} - shared_std
    assert not set(machine_fds.values()) & named
    assert "anon_inode:[pidfd]" in server_fds.values()
    assert "anon_inode:[pidfd]" not in machine_fds.values()
    # Its stdout and stderr are its log file.
    assert machine_fds[1] == machine_fds[2] == str(log_dir / f"{ref.id}.log")
    assert _ppid(_pid(older)) == server


async def test_aclose_leaves_no_process_behind(settings: Settings, log_dir: Path) -> None:
    launcher = LocalLauncher(
        program=machine_program(),
        settings=settings.model_copy(update={"local_machine_log_dir": str(log_dir)}),
        fork=True,
    )
    refs = [await launcher.launch(_spec()) for _ in range(3)]
    server = launcher.fork_server_pid
    assert server is not None
    await _booted(log_dir, refs[0])
    assert sorted(_children_of(server)) == sorted(_pid(ref) for ref in refs)
    await launcher.aclose()
    assert not _children_of(server)
    assert not _alive(server)
    assert not [ref for ref in refs if _alive(_pid(ref))]
    assert launcher.fork_server_pid is None


_LAUNCHER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json
    from functions.registry import machine_program
    from shared.launchers.base import MachineSpec
    from shared.launchers.local import LocalLauncher
    from shared.settings import load_settings

    async def main():
        settings = load_settings()
        launcher = LocalLauncher(program=machine_program(), settings=settings, fork=True)
        env = {"JOB_QUEUE": "default", "MACHINE_IDLE_SECONDS": "60", "MACHINE_MAX_JOBS": "1"}
        refs = [await launcher.launch(MachineSpec(queue="default", job_id=None, env=env)) for _ in range(2)]
        print(json.dumps({"server": launcher.fork_server_pid, "machines": [r.detail["pid"] for r in refs]}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_the_fork_server_and_its_machines_end_when_the_launcher_process_dies(
    settings: Settings, log_dir: Path
) -> None:
    machine_settings = settings.model_copy(update={"local_machine_log_dir": str(log_dir)})
    # The settings travel as environment variables, as they do to machines.
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER_SCRIPT],
        cwd=REPO_ROOT,
        env={**os.environ, **machine_settings.machine_env()},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), WAIT_SECONDS)
        pids = json.loads(line)
        server, machines = pids["server"], pids["machines"]
        assert server is not None and _ppid(server) == process.pid
        assert all(_ppid(pid) == server for pid in machines)
        process.kill()
        process.wait()
        # The server sees EOF, sends its machines SIGTERM (they shut down cleanly) and exits.
        await _wait_for(lambda: not _alive(server) and not any(_alive(pid) for pid in machines), "processes to end")
    finally:
        process.kill()
        process.wait()


async def test_machines_start_as_subprocesses_once_the_fork_server_died(launcher: LocalLauncher, log_dir: Path) -> None:
    forked = await launcher.launch(_spec())
    server = launcher.fork_server_pid
    assert server is not None and _ppid(_pid(forked)) == server
    os.kill(server, signal.SIGKILL)
    await _wait_for(lambda: not _alive(server), "the fork server to die")
    plain = await launcher.launch(_spec())
    assert _ppid(_pid(plain)) == os.getpid()
    assert launcher.fork_server_pid is None
    await _booted(log_dir, plain)
    # The orphaned machine is still tracked (its pidfd): running, then exited with no known code.
    await _booted(log_dir, forked)
    assert (await launcher.status(forked.id)).state == "running"
    await launcher.stop(forked.id)
    assert not _alive(_pid(forked))
    assert (await launcher.status(forked.id)).state == "exited"
    await launcher.stop(plain.id)
    assert (await launcher.status(plain.id)).exit_code == 0


async def test_fork_server_is_off_with_the_setting(settings: Settings, log_dir: Path) -> None:
    launcher = LocalLauncher(
        program=machine_program(),
        settings=settings.model_copy(update={"local_machine_log_dir": str(log_dir), "local_launcher_fork": False}),
    )
    try:
        ref = await launcher.launch(_spec(queue="no-such-queue"))
        assert _ppid(_pid(ref)) == os.getpid()
        assert launcher.fork_server_pid is None
        assert (await _exited(launcher, ref.id)).exit_code == 2
    finally:
        await launcher.aclose()


def test_preloading_imports_no_heavy_library_and_starts_no_thread() -> None:
    code = (
        "import sys, threading\n"
        "from functions.registry import machine_program\n"
        "from shared.launchers.forkserver import HEAVY_MODULES, preload\n"
        "program = machine_program()\n"
        "preload([program.module, *program.preload])\n"
        "print([m for m in HEAVY_MODULES if m in sys.modules], threading.active_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[] 1"


def test_a_fork_server_whose_launcher_left_before_it_was_ready_exits_quietly() -> None:
    """A launcher shut down while its fork server was still importing (SIGTERM to a just-started
    API): the server's "ready" meets a closed socket. It exits 0 and writes nothing, since its
    stderr is the service's log, where a traceback is a line no log reader can parse."""
    import socket

    from functions.registry import machine_program

    program = machine_program()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.close()  # gone before the server could say anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shared.launchers.forkserver", str(theirs.fileno()), "1", program.module],
            cwd=REPO_ROOT,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS,
        )
    finally:
        theirs.close()
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_ctrl_c_while_the_fork_server_imports_writes_no_traceback(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group, a fork server still importing included; the API
    then shuts down and closes its end. The server must leave quietly, not print KeyboardInterrupt
    into the API's log (its stderr)."""
    import socket
    import time

    from functions.registry import machine_program

    program = machine_program()
    marker = tmp_path / "importing"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [sys.executable, "-m", "shared.launchers.forkserver", str(theirs.fileno()), "1", program.module]
    server = subprocess.Popen(
        [*argv, "tests.support.slow_preload"],
        cwd=REPO_ROOT,
        env={**os.environ, "SLOW_PRELOAD_MARKER": str(marker)},
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not marker.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the server never reached its preloads"
        server.send_signal(signal.SIGINT)
        ours.close()  # the launcher's process shuts down on the same Ctrl-C
        out, err = server.communicate(timeout=WAIT_SECONDS)
    finally:
        ours.close()
        if server.poll() is None:
            server.kill()
            server.wait()
    assert (server.returncode, err, out) == (0, "", "")
