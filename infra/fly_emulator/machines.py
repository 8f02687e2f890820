"""The emulator's machine records: state, events (newest first), leases, and their JSON views.

Records are changed only on the server's event loop; every change goes through `Store.touch`,
which wakes both asyncio waiters (the wait endpoint) and threads (test helpers). Readers on other
threads take `Store.snapshot()` copies under the same lock.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import wire

# States in which a process runs or is about to (delete needs force, start is refused).
ACTIVE_STATES = frozenset({"starting", "started", "stopping", "restarting"})
STARTABLE_STATES = frozenset({"created", "stopped", "suspended"})


@dataclass(slots=True)
class Lease:
    nonce: str
    expires_at: int  # Unix seconds
    owner: str
    description: str
    version: str

    def active(self) -> bool:
        return self.expires_at > time.time()

    def view(self) -> dict[str, Any]:
        return {
            "nonce": self.nonce,
            "expires_at": self.expires_at,
            "owner": self.owner,
            "description": self.description,
            "version": self.version,
        }


@dataclass(slots=True, kw_only=True)
class Machine:
    id: str
    app: str
    name: str
    region: str
    config: dict[str, Any]
    instance_id: str = field(default_factory=wire.ulid)
    private_ip: str = field(default_factory=wire.private_ip)
    created_at: str = field(default_factory=wire.rfc3339)
    updated_at: str = field(default_factory=wire.rfc3339)
    state: str = "created"
    events: list[dict[str, Any]] = field(default_factory=list)
    restart_count: int = 0
    lease: Lease | None = None
    destroyed_at: float | None = None  # time.monotonic() when destroyed
    # Fly on a bad day (see faults.py), all in time.monotonic() seconds.
    visible_at: float = 0.0  # before this, the API answers 404 for it and list leaves it out
    preparing_until: float = 0.0  # image pull: rests in `created`, start/stop answer 412
    masked: tuple[str, float] | None = None  # (state shown instead of the real one, until)
    host_unreachable: bool = False
    state_before_destroy: str = "created"  # what a lagging list still shows
    # Runtime bookkeeping (never serialised).
    process: asyncio.subprocess.Process | None = None
    boot_pending: bool = False
    never_boots: bool = False
    stop_requested: bool = False
    destroy_requested: bool = False
    forced_exit: tuple[int, bool] | None = None  # (exit_code, oom_killed) set by the OOM fault or the test hook
    spawning: bool = False  # its process is being started: it may run before the emulator knows it
    pending_stop: tuple[int, float] | None = None  # (signal, timeout) of a stop that came while spawning

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.config.get("metadata") or {})

    @property
    def restart_policy(self) -> tuple[str, int]:
        restart = self.config.get("restart") or {}
        # "on-failure" is "the default when there's no explicit restart policy" (reference 5.2).
        return str(restart.get("policy") or "on-failure"), int(restart.get("max_retries") or 10)

    def add_event(self, type_: str, status: str, source: str, request: dict[str, Any] | None = None) -> None:
        event: dict[str, Any] = {"id": wire.ulid(), "type": type_, "status": status, "source": source}
        event["timestamp"] = wire.now_ms()
        if request is not None:
            event["request"] = request
        self.events.insert(0, event)
        self.updated_at = wire.rfc3339()

    def has_exited(self) -> bool:
        return any(e["type"] == "exit" for e in self.events)

    def lease_active(self) -> Lease | None:
        return self.lease if self.lease is not None and self.lease.active() else None

    def visible(self, now: float) -> bool:
        return now >= self.visible_at

    def preparing(self, now: float) -> bool:
        return self.state == "created" and now < self.preparing_until

    def shown_state(self, now: float) -> str:
        if self.masked is not None and now < self.masked[1] and self.state not in ("destroying", "destroyed"):
            return self.masked[0]
        return self.state

    def view(self, *, summary: bool = False, with_nonce: str | None = None) -> dict[str, Any]:
        """The `Machine` JSON object (reference 4.1); `summary` omits config, events, checks, nonce.

        On an unreachable host the config "can't be fully retrieved": fly-go's `Machine` then
        carries `incomplete_config` instead of `config` (machine_types.go, `GetConfig`).
        """
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.shown_state(time.monotonic()),
            "region": self.region,
            "instance_id": self.instance_id,
            "version": self.instance_id,
            "private_ip": self.private_ip,
            "image_ref": wire.image_ref(str(self.config.get("image", ""))),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "host_status": "unreachable" if self.host_unreachable else "ok",
        }
        if summary:
            return out
        config = copy.deepcopy(self.config)
        config.setdefault("init", {})  # real responses normalise the echoed config
        config.setdefault("dns", {})
        if self.host_unreachable:
            out["incomplete_config"] = {k: config[k] for k in ("image", "metadata") if k in config}
        else:
            out["config"] = config
        out["events"] = copy.deepcopy(self.events)
        out["checks"] = []
        if with_nonce is not None:
            out["nonce"] = with_nonce
        return out


class Store:
    """All machines of all apps, with change notification."""

    def __init__(self, *, destroyed_retention_seconds: float) -> None:
        self._machines: dict[str, Machine] = {}
        self._lock = threading.Condition()
        self._changed = asyncio.Event()
        self.destroyed_retention_seconds = destroyed_retention_seconds

    @contextmanager
    def mutate(self) -> Iterator[None]:
        """Hold the lock for a change, then wake every waiter."""
        with self._lock:
            yield
            self._lock.notify_all()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def touch(self) -> None:
        with self.mutate():
            pass

    async def changed(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the next change (server loop only)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return

    def add(self, machine: Machine) -> None:
        with self.mutate():
            self._machines[machine.id] = machine

    def reveal(self, machine_id: str) -> None:
        """End a machine's invisibility after create now (tests decide when Fly catches up)."""
        with self._lock:
            self._machines[machine_id].visible_at = 0.0

    def hide(self, machine_id: str) -> None:
        """Answer 404 for a machine until revealed again (a read that lags once more)."""
        with self._lock:
            self._machines[machine_id].visible_at = float("inf")

    def get(self, app: str, machine_id: str) -> Machine | None:
        """The machine, or None when unknown, in another app, or destroyed past retention."""
        machine = self._machines.get(machine_id)
        if machine is None or machine.app != app:
            return None
        destroyed_at = machine.destroyed_at
        if destroyed_at is not None and time.monotonic() - destroyed_at > self.destroyed_retention_seconds:
            return None
        return machine

    def visible(self, app: str, machine_id: str) -> Machine | None:
        """The machine as the API sees it: None also while it is still invisible after create."""
        machine = self.get(app, machine_id)
        return machine if machine is not None and machine.visible(time.monotonic()) else None

    def in_app(self, app: str) -> list[Machine]:
        return [m for m in self._machines.values() if m.app == app and self.get(app, m.id) is not None]

    def all(self) -> list[Machine]:
        return list(self._machines.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """Copies of every machine's JSON view plus its app (safe from any thread)."""
        with self._lock:
            return [{**m.view(), "app": m.app} for m in self._machines.values()]

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block a (non-server) thread until `predicate()` holds, or time runs out.

        Wakes on every change, and also polls, so predicates may look outside the store too.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))
            return True
