"""Optional warm pool: N stopped machines per queue, started on demand instead of created.

Why (reference 6.1): creating a machine fetches the image and builds a root file system ("low
double digit seconds"), while starting a stopped one "usually takes well under a second".
Stopped machines cost their root file system only.

How:
- Pool machines are created with `skip_launch` (state `created`), `auto_destroy: false` and
  restart `no`, so when their process exits they rest in `stopped`, ready for the next start.
- `start` has no body (reference 3.5, 6.2), so a pool machine cannot be told which job woke it:
  its env holds JOB_QUEUE and the drain settings but no JOB_ID, and it claims whatever is next
  in its queue (the machine contract makes JOB_ID optional).
- `start` only succeeds from `stopped`/`created` (reference 3.5, [D-faas]), so the start call is
  itself the claim: two dispatchers racing for one machine cannot both win it.
- Each pool machine records a fingerprint of its image, size and env; when WORKER_IMAGE or the
  drain settings change, idle machines with an old fingerprint are destroyed and replaced.
- A pool machine keeps its id across runs, so records keyed by machine id see it again.
- Fly lists a new machine late (flyctl retries the 404 of a machine "we just created"), so the
  pool counts the machines it created itself until the list shows them, or it would overfill.
- `start` meets 412 while a pool machine's image is still being prepared and 409 on a full host:
  the launch then creates a machine instead, and the pool machine stays for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import LauncherError
from shared.settings import Settings

from .base import MachineProgram, MachineRef
from .fly_api import MachinesAPI
from .fly_config import (
    META_LAUNCH_ID,
    META_POOL,
    META_POOL_CONFIG,
    META_QUEUE,
    META_ROLE,
    ROLE_FUNCTION,
    create_body,
    pool_fingerprint,
)
from .fly_state import machine_metadata

logger = logging.getLogger(__name__)

POOL_WARM = "warm"
IDLE_STATES = frozenset({"created", "stopped"})
UNLISTED_GRACE_SECONDS = 120.0  # how long a pool machine we created may be missing from list
_GONE_OR_BROKEN = frozenset({"failed", "launch_failed", "destroying", "destroyed"})


def is_idle_pool_machine(machine: Mapping[str, Any]) -> bool:
    """A warm-pool machine resting between runs (capacity, not running work)."""
    return machine_metadata(machine).get(META_POOL) == POOL_WARM and machine.get("state") in IDLE_STATES


class WarmPool:
    """Keeps `size` idle machines per queue and hands one out per launch."""

    def __init__(self, *, api: MachinesAPI, settings: Settings, size: int, program: MachineProgram) -> None:
        self._api = api
        self._settings = settings
        self._program = program
        self._regions: list[str | None] = list(settings.fly_placement) or [None]
        self._size = size
        self._filling: dict[str, asyncio.Task[None]] = {}
        self._created: dict[str, dict[str, float]] = {}  # queue -> pool machine id -> when we created it

    @staticmethod
    def pool_env(env: Mapping[str, str]) -> dict[str, str]:
        """A pool machine's env: the launch env without the per-job JOB_ID (start has no body)."""
        return {k: v for k, v in env.items() if k != "JOB_ID"}

    async def take(
        self, *, queue: str, env: Mapping[str, str], listing: Sequence[Mapping[str, Any]]
    ) -> MachineRef | None:
        """Start an idle pool machine of `queue`; None when none could be started.

        `listing` is our machines as listed a moment ago, so it may be behind: those it shows
        idle are tried first, then those we created that it does not show yet, then those it
        shows busy (they may be done by now). `start` itself tells whether one is still idle.

        Also schedules topping the pool up to its size and retiring stale machines.
        Raises LauncherUnavailable or LauncherRejected when Fly cannot be asked.
        """
        pool_env = self.pool_env(env)
        image = self._settings.worker_image or ""
        fingerprint = pool_fingerprint(image=image, guest=self._program.guests(queue), env=pool_env)
        machines = [
            m
            for m in listing
            if machine_metadata(m).get(META_QUEUE) == queue and machine_metadata(m).get(META_POOL) == POOL_WARM
        ]
        current = [m for m in machines if machine_metadata(m).get(META_POOL_CONFIG) == fingerprint]
        stale_idle = [m for m in machines if m not in current and is_idle_pool_machine(m)]
        unlisted = self._unlisted(queue, listed={str(m["id"]) for m in machines})
        idle = [m for m in current if is_idle_pool_machine(m)]
        busy = [m for m in current if m not in idle and m.get("state") not in _GONE_OR_BROKEN]
        candidates = [(str(m["id"]), m.get("region")) for m in idle]
        candidates += [(machine_id, None) for machine_id in unlisted]
        candidates += [(str(m["id"]), m.get("region")) for m in busy]
        started: MachineRef | None = None
        for machine_id, region in candidates:
            if await self._api.start(machine_id):
                started = MachineRef(id=machine_id, detail={"pool": POOL_WARM, "region": region})
                break
        if len(current) + len(unlisted) < self._size or stale_idle:
            self._schedule_fill(queue, pool_env, missing=self._size - len(current) - len(unlisted), stale=stale_idle)
        return started

    def _unlisted(self, queue: str, *, listed: set[str]) -> list[str]:
        """Pool machines we created that the list does not show yet (forgotten once it does)."""
        now = time.monotonic()
        created = self._created.setdefault(queue, {})
        for machine_id in [m for m, at in created.items() if m in listed or now - at > UNLISTED_GRACE_SECONDS]:
            del created[machine_id]
        return list(created)

    def _schedule_fill(
        self, queue: str, env: dict[str, str], *, missing: int, stale: Sequence[Mapping[str, Any]]
    ) -> None:
        task = self._filling.get(queue)
        if task is not None and not task.done():
            return
        self._filling[queue] = asyncio.create_task(self._fill(queue, env, missing=missing, stale=stale))

    async def _fill(self, queue: str, env: dict[str, str], *, missing: int, stale: Sequence[Mapping[str, Any]]) -> None:
        try:
            for machine in stale:
                await self._api.destroy(str(machine["id"]), force=False)
                logger.info("fly pool machine retired", extra={"machineId": machine["id"], "queue": queue})
            image = self._settings.worker_image or ""
            fingerprint = pool_fingerprint(image=image, guest=self._program.guests(queue), env=env)
            for _ in range(max(missing, 0)):
                launch_id = uuid.uuid4().hex
                metadata = {
                    META_ROLE: ROLE_FUNCTION,
                    META_QUEUE: queue,
                    META_POOL: POOL_WARM,
                    META_POOL_CONFIG: fingerprint,
                    META_LAUNCH_ID: launch_id,
                }
                body = create_body(
                    settings=self._settings,
                    program=self._program,
                    queue=queue,
                    env=env,
                    metadata=metadata,
                    skip_launch=True,
                    auto_destroy=False,
                )
                machine = await self._api.create(body, launch_id=launch_id, regions=self._regions)
                self._created.setdefault(queue, {})[str(machine["id"])] = time.monotonic()
                logger.info("fly pool machine created", extra={"machineId": machine.get("id"), "queue": queue})
        except LauncherError as exc:
            # The pool is an optimisation: launches fall back to creating machines meanwhile.
            logger.warning("fly pool fill failed", extra={"queue": queue, "error": str(exc)})

    async def filled(self) -> None:
        """Wait for the pool fills in flight (tests, and a graceful close)."""
        await asyncio.gather(*[t for t in self._filling.values() if not t.done()], return_exceptions=True)

    async def aclose(self, *, grace_seconds: float = 10.0) -> None:
        """Let pool fills in flight finish for up to `grace_seconds`, then cancel them."""
        tasks = [t for t in self._filling.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._filling.clear()
