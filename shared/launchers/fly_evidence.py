"""What the Fly launcher has seen of each machine, so that no single answer decides its fate.

- Gone: Fly can answer 404 for a machine it created moments ago (flyctl
  `internal/machine/leasable_machine.go`: "Machine not found but we just created it - retry with
  backoff (it may not be visible yet)"), so a 404 alone proves nothing. A machine is gone only
  when 404s span `gone_confirm_seconds` with no sighting in between (two reads apart), and never
  within the boot grace of a create of ours. (An exit event, read from Fly, is evidence enough:
  that path does not come through here.)
- Left behind: Fly keeps machines that will never run our work: `failed` ("may be recoverable")
  or `launch_failed`, a machine stuck in `created`/`starting` (an image pull can stall for hours:
  community.fly.io "Machine stuck in created for 2h20m"), and a machine resting `stopped` that
  `auto_destroy` should have removed. One look is not enough: a machine is left behind once we
  have seen it in such a state for a bound (the boot grace for booting states, `leftover_seconds`
  for the others), timed by our clock, not by Fly's timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .fly_config import META_POOL
from .fly_pool import POOL_WARM, is_idle_pool_machine
from .fly_state import FAILED_STATES, machine_metadata

_BOOTING: Final = frozenset({"creating", "created", "starting"})
_MAX_TRACKED: Final = 10_000  # machines remembered; the oldest sightings go first past this


@dataclass(slots=True)
class _Seen:
    state: str
    since: float  # when we first saw it in `state`
    last: float  # last sighting
    leftover: bool = False  # as judged at the last sighting


class Evidence:
    """Sightings and 404s per machine id, on our monotonic clock."""

    def __init__(
        self,
        *,
        boot_grace_seconds: float,
        gone_confirm_seconds: float,
        leftover_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._boot_grace = boot_grace_seconds
        self._confirm = gone_confirm_seconds
        self._leftover = leftover_seconds
        self._clock = clock
        self._created: dict[str, float] = {}
        self._seen: dict[str, _Seen] = {}
        self._missing_since: dict[str, float] = {}

    def created(self, machine_id: str) -> None:
        """We just created (or started) it: a 404 within the boot grace is Fly catching up."""
        self._created[machine_id] = self._clock()
        self._missing_since.pop(machine_id, None)
        self._trim()

    def seen(self, machine: Mapping[str, Any]) -> bool:
        """Fly showed the machine (get or list). Returns whether it is now a leftover."""
        machine_id, state, now = str(machine["id"]), str(machine.get("state", "")), self._clock()
        self._missing_since.pop(machine_id, None)
        if state == "destroyed":
            self.forget(machine_id)
            return False
        seen = self._seen.get(machine_id)
        if seen is None or seen.state != state:
            seen = self._seen[machine_id] = _Seen(state=state, since=now, last=now)
        else:
            seen.last = now
        seen.leftover = self._leftover_now(machine, now - seen.since)
        self._trim()
        return seen.leftover

    def missing(self, machine_id: str) -> bool:
        """Fly answered 404 now. True once that is consistent evidence the machine is gone."""
        now = self._clock()
        created = self._created.get(machine_id)
        if created is not None and now - created < self._boot_grace:
            return False
        first = self._missing_since.setdefault(machine_id, now)
        if now - first < self._confirm:
            return False
        self.forget(machine_id)
        return True

    def _leftover_now(self, machine: Mapping[str, Any], held: float) -> bool:
        """Whether Fly has kept this machine `held` seconds in a state that will not run our work."""
        state = str(machine.get("state", ""))
        if state in FAILED_STATES:
            return held >= self._leftover
        if is_idle_pool_machine(machine):
            return False  # resting in the pool is its job
        if state in _BOOTING:
            return held >= self._boot_grace
        pooled = machine_metadata(machine).get(META_POOL) == POOL_WARM
        return state == "stopped" and not pooled and held >= self._leftover

    def was_leftover(self, machine_id: str) -> bool:
        """Whether the last sighting of the machine found it left behind."""
        seen = self._seen.get(machine_id)
        return seen is not None and seen.leftover

    def forget(self, machine_id: str) -> None:
        self._created.pop(machine_id, None)
        self._seen.pop(machine_id, None)
        self._missing_since.pop(machine_id, None)

    def _trim(self) -> None:
        for table in (self._created, self._missing_since):
            while len(table) > _MAX_TRACKED:
                del table[next(iter(table))]
        if len(self._seen) > _MAX_TRACKED:
            oldest = sorted(self._seen, key=lambda k: self._seen[k].last)[: len(self._seen) - _MAX_TRACKED]
            for machine_id in oldest:
                del self._seen[machine_id]
