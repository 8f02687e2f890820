"""The emulator's rate limiter: one token bucket per (action, identifier), answering 429 as Fly does.

Limits per Fly's docs (see actions.py). The 429 body `{"error": "rate limit exceeded"}` is
unverified (reference 2.4: no source documents the 429 body or a Retry-After header); flyctl
and fly-go only look at the status (flyctl `flapsutil.IsTransientFlapsError`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from .actions import Limit, limit_of


class TokenBucket:
    """`rate` tokens per second up to `burst`; a request takes one token."""

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.tokens = limit.burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.limit.burst, self.tokens + (now - self.at) * self.limit.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """Off until `enabled`; counts what it refused, per action."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.enabled = False
        self.rejected: Counter[str] = Counter()
        # Tests freeze it, so that how fast a loaded host sends requests changes no answer.
        self.clock: Callable[[], float] = time.monotonic

    def allow(self, action: str, identifier: str) -> bool:
        if not self.enabled:
            return True
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get((action, identifier))
            if bucket is None:
                bucket = self._buckets[(action, identifier)] = TokenBucket(limit_of(action), now)
            if bucket.take(now):
                return True
            self.rejected[action] += 1
            return False

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
            self.rejected.clear()
            self.enabled = False
            self.clock = time.monotonic
