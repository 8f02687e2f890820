"""Run the emulator inside a test: uvicorn on a free loopback port, in a thread.

    with running_emulator(base_env={"DATABASE_URL": url}, token="t") as emu:
        settings = ...(fly_api_hostname=emu.url, fly_api_token="t", fly_worker_app="cp-worker")
        ...
        emu.wait_for_state(machine_id, "destroyed")
        assert emu.requests_to("POST", "/machines")[0].json["config"]["auto_destroy"]

Leaving the block stops the server, which kills every machine process it started.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from .app import create_app
from .faults import Faults
from .machines import Store
from .ratelimit import RateLimiter
from .recorder import ActionRate, RecordedRequest, Recorder
from .supervisor import REPO_ROOT, Supervisor

DESTROYED_RETENTION_SECONDS = 48 * 3600  # "queryable up to 48 hours after they are destroyed" (reference 3.2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Emulator:
    """A running emulator: its base URL and what it has seen."""

    url: str
    token: str
    faults: Faults
    limiter: RateLimiter  # off until `limiter.enabled = True`: then 429s beyond Fly's per-action limits
    log_dir: Path
    _store: Store
    _recorder: Recorder

    def rate_report(self, since: float = 0.0) -> dict[str, ActionRate]:
        """Calls per action since `since` (time.monotonic()), and how many Fly's limits would refuse."""
        return self._recorder.rate_report(since)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered so far, oldest first."""
        return self._recorder.requests

    def requests_to(self, method: str, path_suffix: str = "") -> list[RecordedRequest]:
        """Requests with `method` whose path ends with `path_suffix`."""
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    @property
    def machines(self) -> list[dict[str, Any]]:
        """JSON views of every machine ever created (destroyed ones too), plus `app`."""
        return self._store.snapshot()

    def machine(self, machine_id: str) -> dict[str, Any] | None:
        return next((m for m in self.machines if m["id"] == machine_id), None)

    def not_destroyed(self) -> list[dict[str, Any]]:
        """Machines that still exist (any state but `destroyed`)."""
        return [m for m in self.machines if m["state"] != "destroyed"]

    def wait_until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> None:
        """Block until `predicate(machines)` holds. Raises TimeoutError after `timeout` seconds."""
        if not self._store.wait_until(lambda: predicate(self.machines), timeout):
            raise TimeoutError(f"emulator condition not met within {timeout}s")

    def reveal(self, machine_id: str) -> None:
        """Make a machine created under `faults.invisible_seconds` (or hidden) visible now."""
        self._store.reveal(machine_id)

    def hide(self, machine_id: str) -> None:
        """Make a machine answer 404 and leave the list until `reveal`."""
        self._store.hide(machine_id)

    def wait_for_state(self, machine_id: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        """Block until the machine is in one of `states`; returns its view. Raises TimeoutError."""

        def reached(machines: list[dict[str, Any]]) -> bool:
            return any(m["id"] == machine_id and m["state"] in states for m in machines)

        self.wait_until(reached, timeout)
        machine = self.machine(machine_id)
        if machine is None:  # pragma: no cover - machines are never forgotten by the store
            raise TimeoutError(machine_id)
        return machine

    def log(self, machine_id: str) -> str:
        """What the machine's process wrote to stdout/stderr (all runs)."""
        path = self.log_dir / f"{machine_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def running_emulator(
    base_env: Mapping[str, str] | None = None,
    token: str = "emulator-token",  # noqa: S107 - a test double's token, not a secret
    *,
    apps: Sequence[str] | None = None,
    workdir: Path = REPO_ROOT,
    pythonpath: Sequence[Path] = (REPO_ROOT,),
    log_dir: Path | None = None,
    default_region: str = "iad",
    destroyed_retention_seconds: float = DESTROYED_RETENTION_SECONDS,
) -> Iterator[Emulator]:
    """Start the emulator on 127.0.0.1 and a free port; stop it (and its machines) on exit.

    `base_env` plays the worker app's secrets; `apps` limits the known apps (any when None);
    `pythonpath` is prepended to each machine's PYTHONPATH (the repository root by default, so
    `python -m functions.machine` resolves). Raises RuntimeError if the server does not start.
    """
    with tempfile.TemporaryDirectory(prefix="fly-emulator-") as tmp:
        logs = log_dir or Path(tmp)
        store = Store(destroyed_retention_seconds=destroyed_retention_seconds)
        faults = Faults()
        recorder = Recorder()
        limiter = RateLimiter()
        supervisor = Supervisor(
            store=store, faults=faults, base_env=base_env or {}, workdir=workdir, pythonpath=pythonpath, log_dir=logs
        )
        app = create_app(
            store=store,
            supervisor=supervisor,
            faults=faults,
            recorder=recorder,
            token=token,
            apps=frozenset(apps) if apps is not None else None,
            default_region=default_region,
            limiter=limiter,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fly-emulator", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 15
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("fly emulator did not start")
                time.sleep(0.01)
            yield Emulator(
                url=f"http://127.0.0.1:{port}",
                token=token,
                faults=faults,
                limiter=limiter,
                log_dir=logs,
                _store=store,
                _recorder=recorder,
            )
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()
