"""Client-side pacing of Machines API calls: one token bucket per (action, identifier).

Fly's docs ("Working with the Machines API", Rate Limits): limits apply "per-action, per-machine
and are scoped per identifier. That might be Machine ID or App ID … 1 request, per second, per
action … with a short-term burst limit up to 3 req/s … except Get Machine which is 5 req/s, with
a short-term burst limit up to 10 req/s." Calls without a machine id (create, list) are scoped to
the app (inferred). We stay a little under those numbers, so that jitter between our clock and
Fly's never turns a paced call into a 429: a call waits for its token instead of being refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Pace:
    rate: float  # calls per second, on average
    burst: float  # calls at once


DEFAULT_PACE: Final = Pace(rate=0.9, burst=2.0)  # Fly: 1/s, burst 3
PACES: Final[Mapping[str, Pace]] = {"get": Pace(rate=4.0, burst=5.0)}  # Fly: 5/s, burst 10
_MAX_BUCKETS: Final = 2048  # one per machine and action: forget the idle ones past this


class _Bucket:
    def __init__(self, pace: Pace, now: float) -> None:
        self.pace = pace
        self.tokens = pace.burst
        self.at = now

    def reserve(self, now: float) -> float:
        """Take a token (possibly one not refilled yet); seconds to wait before using it."""
        self.tokens = min(self.pace.burst, self.tokens + (now - self.at) * self.pace.rate)
        self.at = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.pace.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.at) * self.pace.rate >= self.pace.burst


class Pacer:
    """Waits, per action and identifier, until a call fits under Fly's limits. Callers queue in order."""

    def __init__(self, paces: Mapping[str, Pace] = PACES, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._paces = paces
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.waited_seconds = 0.0  # total time calls spent waiting for their turn

    async def wait(self, action: str, identifier: str) -> None:
        now = self._clock()
        bucket = self._buckets.get((action, identifier))
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_idle(now)
            bucket = self._buckets[(action, identifier)] = _Bucket(self._paces.get(action, DEFAULT_PACE), now)
        delay = bucket.reserve(now)
        if delay > 0:
            self.waited_seconds += delay
            await asyncio.sleep(delay)

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]
