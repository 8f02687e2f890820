"""Runs each emulated machine's command as a local process and drives its lifecycle.

Boot: `created` → `starting` → `started` (a `start` event), then the process runs in its own
session with the image env, the config env, the emulator's base env (standing in for the worker
app's secrets, which win over config env as Fly secrets do) and Fly's runtime variables
(FLY_MACHINE_ID …, reference 6.3). Exit: an `exit` event with `request.exit_event`, then the
restart policy (reference 11.3): `no` → `stopped` (and with `auto_destroy`, `destroyed`);
`on-failure` restarts a non-zero exit up to `max_retries`; `always` restarts.
Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import wire
from .faults import Faults
from .machines import Machine, Store

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the worker image runs when a machine's config names no command (infra/Dockerfile CMD).
IMAGE_CMD: tuple[str, ...] = ("python", "-m", "functions.machine")
# Variables a process inherits from the emulator's own environment, as an image would bake them.
_IMAGE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
_PYTHONS = {"python", "python3", f"python3.{sys.version_info.minor}"}
_DEFAULT_STOP_TIMEOUT_SECONDS = 5.0  # fly.toml kill_timeout default (reference 7)
_RESTART_DELAY_SECONDS = 0.1


class Supervisor:
    """Boots, watches, stops and destroys machine processes."""

    def __init__(
        self,
        *,
        store: Store,
        faults: Faults,
        base_env: Mapping[str, str],
        workdir: Path = REPO_ROOT,
        pythonpath: Sequence[Path] = (REPO_ROOT,),
        log_dir: Path,
    ) -> None:
        self._store = store
        self._faults = faults
        self._base_env = dict(base_env)
        self._workdir = workdir
        self._pythonpath = [str(p) for p in pythonpath]
        self.log_dir = log_dir
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def argv(self, machine: Machine) -> list[str]:
        """The command line: `init.exec`, else `init.entrypoint` + (`init.cmd` or the image CMD)."""
        init = machine.config.get("init") or {}
        argv = list(init.get("exec") or [])
        if not argv:
            argv = list(init.get("entrypoint") or []) + list(init.get("cmd") or IMAGE_CMD)
        if argv and argv[0] in _PYTHONS:
            argv[0] = sys.executable
        return [str(a) for a in argv]

    def env(self, machine: Machine) -> dict[str, str]:
        env = {k: os.environ[k] for k in _IMAGE_ENV if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        env.update({str(k): str(v) for k, v in (machine.config.get("env") or {}).items()})
        env.update(self._base_env)
        guest = machine.config.get("guest") or {}
        env.update(
            FLY_MACHINE_ID=machine.id,
            FLY_ALLOC_ID=machine.id,
            FLY_APP_NAME=machine.app,
            FLY_REGION=machine.region,
            FLY_MACHINE_VERSION=machine.instance_id,
            FLY_PRIVATE_IP=machine.private_ip,
            FLY_IMAGE_REF=str(machine.config.get("image", "")),
            FLY_VM_MEMORY_MB=str(guest.get("memory_mb", 256)),
        )
        env["PYTHONPATH"] = os.pathsep.join([*self._pythonpath, *filter(None, [env.get("PYTHONPATH")])])
        return env

    def boot(self, machine: Machine) -> None:
        """`created`/`stopped` → `starting` now (after the image pull: `created` until then) →
        `started` once the process runs."""
        with self._store.mutate():
            machine.boot_pending = True
            if not machine.preparing(time.monotonic()):
                machine.state = "starting"
        self._spawn_task(self._boot(machine))

    async def _boot(self, machine: Machine) -> None:
        pull_left = machine.preparing_until - time.monotonic()
        if machine.state == "created" and pull_left > 0:
            await asyncio.sleep(pull_left)  # the image is still being prepared
            if machine.state != "created":  # destroyed meanwhile
                return
        with self._store.mutate():
            machine.state = "starting"
            machine.stop_requested = machine.destroy_requested = False
            machine.forced_exit = None
        if self._faults.boot_delay_seconds > 0:
            await asyncio.sleep(self._faults.boot_delay_seconds)
        if machine.state != "starting":  # stopped or destroyed while booting
            return
        failure = self._faults.take_launch_failure()
        if failure is not None:
            await self._fail_launch(machine, failure)
            return
        if machine.never_boots or self._faults.take_never_boot():
            machine.never_boots = True  # stays `starting` until stopped or destroyed
            return
        await self._run(machine)

    async def _fail_launch(self, machine: Machine, state: str) -> None:
        """`failed` stays (it "may be recoverable"); `launch_failed` "will transition to destroyed"."""
        with self._store.mutate():
            machine.boot_pending = False
            machine.state = state
            machine.add_event("launch", state, "flyd")  # event shape unverified
        if state == "launch_failed":
            await asyncio.sleep(self._faults.launch_failed_seconds)
            if machine.state == "launch_failed":
                self.destroy(machine)

    async def _run(self, machine: Machine) -> None:
        log_path = self.log_dir / f"{machine.id}.log"
        machine.spawning = True
        with log_path.open("ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.argv(machine),
                    cwd=self._workdir,
                    env=self.env(machine),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop signals reach children too
                )
            except OSError as exc:
                machine.spawning = False
                log.write(f"emulator: cannot run command: {exc}\n".encode())
                with self._store.mutate():
                    machine.boot_pending = False
                self._on_exit(machine, exit_code=127, signal_number=-1)  # "command not found", as in the docs' example
                return
        if self._faults.spawn_lag_seconds > 0:
            await asyncio.sleep(self._faults.spawn_lag_seconds)  # the process runs; the emulator does not know yet
        # A stop or destroy may have come while the process was being started (it can run, even
        # tell the world it is ready, before this coroutine resumes on a loaded host).
        machine.spawning = False
        if machine.state == "destroyed":  # destroyed meanwhile: the process must not outlive it
            self._signal(process, signal.SIGKILL)
            await process.wait()
            return
        pending_stop, machine.pending_stop = machine.pending_stop, None
        with self._store.mutate():
            machine.process = process
            machine.boot_pending = False
            machine.add_event("start", "started", "flyd")
            machine.state = "stopping" if pending_stop is not None else "started"
        if pending_stop is not None:  # the stop that came meanwhile, as stop() gives it to a running process
            sig, seconds = pending_stop
            self._signal(process, signal.Signals(sig))
            self._spawn_task(self._kill_after(process, seconds))
        oom_after = self._faults.take_oom()
        if oom_after is not None:
            self._spawn_task(self._oom_kill(machine, process, oom_after))
        self._spawn_task(self._watch(machine, process))

    async def _oom_kill(self, machine: Machine, process: asyncio.subprocess.Process, after: float) -> None:
        await asyncio.sleep(after)
        if process.returncode is None:
            machine.forced_exit = (137, True)
            self._signal(process, signal.SIGKILL)

    async def _watch(self, machine: Machine, process: asyncio.subprocess.Process) -> None:
        returncode = await process.wait()
        self._signal(process, signal.SIGKILL)  # the VM goes away with its main process: no stray children
        with self._store.mutate():
            machine.process = None
        if returncode < 0:  # killed by a signal: conventional shell exit code 128 + n (137 for SIGKILL)
            self._on_exit(machine, exit_code=128 - returncode, signal_number=-returncode)
        else:
            self._on_exit(machine, exit_code=returncode, signal_number=-1)

    def _on_exit(self, machine: Machine, *, exit_code: int, signal_number: int) -> None:
        oom_killed = False
        if machine.forced_exit is not None:
            exit_code, oom_killed = machine.forced_exit
        policy, max_retries = machine.restart_policy
        requested = machine.stop_requested or machine.destroy_requested
        restarting = not requested and (
            policy == "always" or (policy == "on-failure" and exit_code != 0 and machine.restart_count < max_retries)
        )
        exit_event = {
            "exit_code": exit_code,
            "guest_exit_code": 0,
            "guest_signal": -1,
            "oom_killed": oom_killed,
            "requested_stop": requested,
            "restarting": restarting,
            "signal": signal_number,
            "exited_at": wire.rfc3339(),
        }
        with self._store.mutate():
            machine.add_event(
                "exit", "stopped", "flyd", {"exit_event": exit_event, "restart_count": machine.restart_count}
            )
            machine.state = "restarting" if restarting else "stopped"
        if restarting:
            machine.restart_count += 1
            self._spawn_task(self._restart(machine))
        elif machine.destroy_requested or machine.config.get("auto_destroy"):
            self.destroy(machine)

    async def _restart(self, machine: Machine) -> None:
        await asyncio.sleep(_RESTART_DELAY_SECONDS)
        if machine.state == "restarting":
            machine.boot_pending = True
            await self._boot(machine)

    def stop(self, machine: Machine, *, signal_name: str | None, timeout: Any) -> None:
        """Stop a machine: signal its process, SIGKILL after the timeout (reference 3.6, 11.4)."""
        stop_config = machine.config.get("stop_config") or {}
        name = signal_name or stop_config.get("signal") or "SIGINT"  # the docs' default
        seconds = wire.parse_duration_seconds(timeout, number_unit_seconds=1.0)
        if seconds is None:
            seconds = wire.parse_duration_seconds(stop_config.get("timeout"), number_unit_seconds=1e-9)
        process = machine.process
        chosen = signal.Signals[name] if name in signal.Signals.__members__ else signal.SIGINT
        timeout_seconds = seconds if seconds is not None else _DEFAULT_STOP_TIMEOUT_SECONDS
        if process is None and machine.spawning:  # its process is starting: it gets the stop once it runs
            with self._store.mutate():
                machine.stop_requested = True
                machine.pending_stop = (int(chosen), timeout_seconds)
                machine.state = "stopping"
            return
        with self._store.mutate():
            machine.stop_requested = True
            if process is None:  # never booted (or between restarts): nothing to signal
                machine.state = "stopped"
                machine.boot_pending = False
            else:
                machine.state = "stopping"
        if process is None:
            if machine.config.get("auto_destroy"):
                self.destroy(machine)
            return
        self._signal(process, chosen)
        self._spawn_task(self._kill_after(process, timeout_seconds))

    async def _kill_after(self, process: asyncio.subprocess.Process, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), seconds)
            return
        self._signal(process, signal.SIGKILL)

    def force_exit(self, machine: Machine, *, exit_code: int, oom_killed: bool) -> bool:
        """Test hook: end the running process as if it exited with `exit_code`. False if none runs."""
        if machine.process is None:
            return False
        machine.forced_exit = (exit_code, oom_killed)
        self._signal(machine.process, signal.SIGKILL)
        return True

    def destroy(self, machine: Machine, *, kill: bool = False) -> None:
        """`destroying` → `destroyed`; with `kill`, SIGKILL a running process first."""
        process = machine.process
        if process is not None and kill:
            with self._store.mutate():
                machine.destroy_requested = True
                machine.state_before_destroy = machine.state
                machine.state = "destroying"
            self._signal(process, signal.SIGKILL)  # the watcher records the exit, then destroys
            return
        with self._store.mutate():
            if not machine.destroy_requested:  # a killed machine went through `stopped` on its way
                machine.state_before_destroy = machine.state
            machine.state = "destroyed"
            machine.boot_pending = False
            machine.destroyed_at = time.monotonic()
            machine.add_event("destroy", "destroyed", "user" if machine.destroy_requested else "flyd")

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    async def shutdown(self) -> None:
        """Kill every machine process (and its children) and wait for them."""
        processes = [m.process for m in self._store.all() if m.process is not None]
        for process in processes:
            self._signal(process, signal.SIGKILL)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
