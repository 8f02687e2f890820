"""Whether the database is in reach, and the retry rule every database write of a machine follows.

A write about a held job is fenced by its claim token, so retrying it is always safe. It is
retried with backoff while the database has been in reach recently; past the self-fence
deadline (half the lifeline's rescue window) the machine stops trying and fences itself, because
the lifeline may soon give its jobs to another machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from .config import DB_RETRY_MAX_SECONDS

logger = logging.getLogger("functions.machine")

T = TypeVar("T")

# What "the database is not in reach" looks like from here: a statement or a connection failed,
# the socket broke, or the pool had no connection to give within its checkout timeout.
UNREACHABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError, OSError, PoolTimeout)


class DatabaseReach:
    """The last time a database round trip went through, and the self-fence deadline after it."""

    def __init__(self, *, self_fence_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.self_fence_after = self_fence_after
        self._clock = clock
        self.reached_at = clock()

    def reached(self) -> None:
        self.reached_at = self._clock()

    def unreachable_for(self) -> float:
        return self._clock() - self.reached_at

    def past_deadline(self) -> bool:
        return self.unreachable_for() > self.self_fence_after

    async def retrying(
        self, what: str, attempt: Callable[[], Awaitable[T]], *, give_up: Callable[[], bool]
    ) -> T | None:
        """`attempt()` until it goes through (returns its value), or None once the deadline passed
        or `give_up()` says so. Errors other than unreachability propagate."""
        delay = 0.25
        while True:
            try:
                value = await attempt()
            except UNREACHABLE:
                if give_up() or self.past_deadline():
                    logger.warning("could not %s (database unreachable); giving up", what, exc_info=True)
                    return None
                logger.warning("could not %s; retrying in %.2fs", what, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_SECONDS)
                continue
            self.reached()
            return value
