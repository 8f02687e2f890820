"""One list call for every reader: the app's machines, refreshed at most every few seconds.

Fly scopes the list action to the app at about 1 request/s (Fly docs, Rate Limits). The
reconciler (every tick), the warm pool (every launch) and status reads all want the list; one
shared, briefly cached listing keeps them inside that budget, so that no reader queues behind
another's paced call in the dispatcher's single loop. Readers accept data up to
`max_age_seconds` old; where that matters (a pool machine already started) the call that acts
(`start`) is the arbiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

LIST_MAX_AGE_SECONDS: Final = 2.0

Machine = dict[str, Any]


class Listing:
    """The last list of our machines, fetched again once older than `max_age_seconds`."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[Machine]]],
        *,
        on_fetched: Callable[[list[Machine]], None],
        max_age_seconds: float = LIST_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._on_fetched = on_fetched
        self._max_age = max_age_seconds
        self._clock = clock
        self._machines: list[Machine] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    def age(self) -> float:
        return self._clock() - self._at if self._machines is not None else float("inf")

    async def machines(self) -> list[Machine]:
        """Our machines as last listed (at most `max_age_seconds` old). Raises what the list raises."""
        if self.age() < self._max_age and self._machines is not None:
            return self._machines
        async with self._lock:  # one refresh at a time; the others get its result
            if self.age() >= self._max_age or self._machines is None:
                machines = await self._fetch()
                self._on_fetched(machines)
                self._machines, self._at = machines, self._clock()
            return self._machines
