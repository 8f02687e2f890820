"""Fault injection for the emulator: the failures the Machines API really produces (reference 11.11).

Set from a test thread (`emulator.faults.fail_next_creates(429, times=2)`) or over HTTP
(`POST /_emu/faults`); consumed by the server thread. Every counter is guarded by one lock.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class Faults:
    """What the next requests or machines should suffer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._create_statuses: deque[int] = deque()
        self._created_but_408 = 0
        self._never_boot = 0
        self._oom = 0
        self.boot_delay_seconds = 0.0
        self.oom_after_seconds = 0.2

    def fail_next_creates(self, status: int, *, times: int = 1) -> None:
        """The next `times` creates answer `status` (429, 503, 412…) and create nothing."""
        with self._lock:
            self._create_statuses.extend([status] * times)

    def create_but_time_out(self, *, times: int = 1) -> None:
        """The next `times` creates make the machine, then answer 408 (flyctl's "silent success")."""
        with self._lock:
            self._created_but_408 += times

    def never_boot(self, *, times: int = 1) -> None:
        """The next `times` machines that boot stay in `starting` forever."""
        with self._lock:
            self._never_boot += times

    def oom_kill(self, *, times: int = 1) -> None:
        """The next `times` processes started are killed as out of memory (exit 137, oom_killed)."""
        with self._lock:
            self._oom += times

    def update(self, spec: dict[str, Any]) -> None:
        """Apply a JSON fault spec: create_statuses, create_but_time_out, never_boot, oom_kill, boot_delay_seconds."""
        for status in spec.get("create_statuses", []):
            self.fail_next_creates(int(status))
        self.create_but_time_out(times=int(spec.get("create_but_time_out", 0)))
        self.never_boot(times=int(spec.get("never_boot", 0)))
        self.oom_kill(times=int(spec.get("oom_kill", 0)))
        if "boot_delay_seconds" in spec:
            self.boot_delay_seconds = float(spec["boot_delay_seconds"])

    def take_create_status(self) -> int | None:
        with self._lock:
            return self._create_statuses.popleft() if self._create_statuses else None

    def take_created_but_408(self) -> bool:
        return self._take("_created_but_408")

    def take_never_boot(self) -> bool:
        return self._take("_never_boot")

    def take_oom(self) -> bool:
        return self._take("_oom")

    def _take(self, name: str) -> bool:
        with self._lock:
            left = int(getattr(self, name))
            if left <= 0:
                return False
            setattr(self, name, left - 1)
            return True

    def clear(self) -> None:
        with self._lock:
            self._create_statuses.clear()
            self._created_but_408 = self._never_boot = self._oom = 0
            self.boot_delay_seconds = 0.0
