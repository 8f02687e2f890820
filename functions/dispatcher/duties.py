"""Each dispatcher duty in its own loop, so one that fails or hangs holds up none of the others.

A failing duty logs (`plugin:error` with the duty's name), is counted in the database
(`dispatcher_duty_errors_total{duty}` on /metrics, whichever process scrapes), and retries after
an exponential backoff (1 s, 2 s, 4 s ... up to DISPATCHER_DUTY_BACKOFF_MAX_SECONDS, never sooner
than its usual interval), reset by its next success. It never ends the leadership: only losing
the lease does (leader.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.db.pool import Pool
from shared.db.sql import QUERIES
from shared.telemetry import emit

logger = logging.getLogger("functions.dispatcher.duties")

BACKOFF_BASE_SECONDS = 1.0
_MAX_ERROR_CHARS = 1000


def backoff_delay(failures: int, *, base: float, cap: float) -> float:
    """base * 2^(failures-1), capped; 0 with no failures."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 62))


@dataclass
class Duty:
    """One periodic job of the leader: `run` every `interval` seconds, or sooner when `wake` is set."""

    name: str
    run: Callable[[], Awaitable[object]]
    interval: float
    wake: asyncio.Event | None = None
    failures: int = 0  # in a row, since the last success
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # clear while inside `run`

    def __post_init__(self) -> None:
        self.idle.set()

    async def loop(
        self,
        may_act: Callable[[], bool],
        term: int,
        on_error: Callable[[Duty, BaseException, float], Awaitable[None]],
        backoff_cap: float,
    ) -> None:
        """Run until cancelled, and only while `may_act()` holds (the lease is trusted)."""
        while True:
            # The record of acting as leader dates the decision and the act, on the wall clock. The
            # decision (checkedAt) is read before the lease check, so it falls within the trusted
            # lease; the act (startedAt) after it. A process frozen after a check that passed still
            # carries that one run out late, which no lease check can prevent: every duty's writes are
            # conditional on the rows' state (README, Dispatcher), and startedAt shows the lateness.
            checked_at = time.time()
            if may_act():
                logger.debug(
                    "duty run",
                    extra={"duty": self.name, "term": term, "checkedAt": checked_at, "startedAt": time.time()},
                )
                delay = self.interval
                self.idle.clear()
                try:
                    await self.run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failures += 1
                    # Never sooner than its usual interval: backing off only ever spaces runs out.
                    delay = max(self.interval, backoff_delay(self.failures, base=BACKOFF_BASE_SECONDS, cap=backoff_cap))
                    await on_error(self, exc, delay)
                else:
                    self.failures = 0
                finally:
                    self.idle.set()
            else:
                delay = min(self.interval, 0.5)  # until the lease is renewed (or leadership ends)
            await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        if self.wake is None or self.failures:
            # Backing off: a NOTIFY must not cut the backoff short.
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)
        self.wake.clear()


@dataclass
class DutyErrors:
    """Reports a duty's failure: a `plugin:error` event and one more in dispatcher_duty_errors."""

    pool: Pool

    async def __call__(self, duty: Duty, exc: BaseException, retry_in: float) -> None:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        emit(
            "plugin:error",
            plugin="dispatcher",
            duty=duty.name,
            error=error,
            failures=duty.failures,
            retryInSeconds=retry_in,
        )
        logger.debug("duty failure", exc_info=exc)
        try:
            # Bounded: a database that does not answer must not stretch this duty's backoff.
            async with asyncio.timeout(5):
                async with self.pool.connection() as conn:
                    await conn.execute(QUERIES["record_duty_error"], {"duty": duty.name, "error": error})
        except Exception:
            # The database may be what failed the duty; the log line above still says so.
            logger.warning("could not count a duty error", extra={"duty": duty.name}, exc_info=True)
