"""Running one held job: the handler under the function's timeout, and its outcome recorded.

Every way a handler can end maps to one outcome: a result (completed, unless it holds a value
that could not be read back), SnoozeJob, PermanentJobError, RetryableJobError, any other
exception (retryable), the timeout, or cancellation (lost claim, shutdown, self-fencing).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from types import ModuleType

from shared.errors import PermanentJobError, RetryableJobError, SnoozeJob
from shared.storable_json import unstorable_values
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

from .held import HeldJob
from .recorder import Recorder

logger = logging.getLogger("functions.machine")


class Executor:
    def __init__(
        self,
        *,
        handler: ModuleType,
        timeout_seconds: float,
        recorder: Recorder,
        stopping: asyncio.Event,
        on_timeout: Callable[[HeldJob], None],
    ) -> None:
        self.handler = handler
        self.timeout_seconds = timeout_seconds
        self.recorder = recorder
        self.stopping = stopping
        self.on_timeout = on_timeout

    async def execute(self, held: HeldJob) -> None:
        job, timeout, recorder = held.job, self.timeout_seconds, self.recorder
        emit(EventName.JOB_START)
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(timeout):
                result = await self.handler.run(job, held.ctx)
        except asyncio.CancelledError:
            if not held.publishable or self.stopping.is_set():
                await self._aborted(held)
                return
            raise
        except TimeoutError:
            self.on_timeout(held)  # first: nothing may cancel the machine's way out
            await recorder.fail(held, kind="timeout", message=f"timed out after {timeout:g}s")
            return
        except SnoozeJob as snooze:
            await recorder.snooze(held, seconds=snooze.seconds)
            return
        except PermanentJobError as exc:
            await recorder.fail(held, kind=exc.kind, message=str(exc), permanent=True)
            return
        except RetryableJobError as exc:
            await recorder.fail(held, kind=exc.kind, message=str(exc), retry_after=exc.retry_after_seconds)
            return
        except Exception as exc:
            message = "".join(traceback.format_exception_only(exc)).strip()
            logger.warning("handler raised", exc_info=True)
            await recorder.fail(held, kind="error", message=message)
            return
        run_ms = round((asyncio.get_running_loop().time() - started) * 1000, 1)
        if not held.publishable:
            # No completion was ever attempted with this claim, so nothing of it can be recorded.
            await recorder.withdraw(held)
            return
        recorded_result = held.ctx.recorded_result(result)
        unstorable = next(unstorable_values(recorded_result, ("result",)), None)
        if unstorable is not None:
            # A value the database could store but never give back (see shared/storable_json.py)
            # would make every read of this job fail: the attempt fails instead, visibly.
            message = f"{unstorable.path}: {unstorable.message}"
            await recorder.fail(held, kind="unstorable-result", message=message, permanent=True)
            return
        try:
            recorded = await recorder.complete(held, recorded_result)
        except asyncio.CancelledError:
            # Shutdown or self-fencing while the completion waited: whether it was recorded is
            # unknown, so its outputs stay (under its own claim: shown only if it was recorded).
            logger.warning("stopped while recording a completion; outcome left to the database")
            return
        if recorded:
            emit(EventName.JOB_COMPLETE, durationMs=run_ms)

    async def _aborted(self, held: HeldJob) -> None:
        if held.lost:
            emit(EventName.JOB_CANCEL, reason="no longer held (cancelled or rescued)")
            await self.recorder.withdraw(held)
            return
        # Shutting down, timed out elsewhere or self-fenced: give the attempt back if the
        # database lets us, briefly; otherwise the lifeline will.
        await self.recorder.hand_back(held)
