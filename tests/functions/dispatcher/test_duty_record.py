"""The record a duty logs when it acts as leader dates both the decision and the act: a process
that stalls after its lease check passed (GC, a starved CPU, SIGSTOP) carries the run out late, and
the record must show when, not only that the decision was taken in time."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from functions.dispatcher.duties import Duty


def test_a_run_delayed_after_its_lease_check_is_recorded_with_its_real_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started: list[float] = []
    trusted_until = time.time() + 0.05  # the lease's trusted end, on the wall clock

    def may_act() -> bool:
        trusted = time.time() < trusted_until  # the check passes...
        time.sleep(0.3)  # ...then the process stalls before acting
        return trusted

    async def run() -> None:
        started.append(time.time())
        raise asyncio.CancelledError  # one run is enough

    async def on_error(*_: object) -> None:
        return None

    caplog.set_level(logging.DEBUG, logger="functions.dispatcher.duties")
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(Duty(name="probe", run=run, interval=1.0).loop(may_act, 7, on_error, 1.0))
    (record,) = [r for r in caplog.records if r.getMessage() == "duty run"]
    assert started[0] > trusted_until  # the stall made it act after the lease's trusted end
    assert record.checkedAt < trusted_until  # type: ignore[attr-defined]  # decided under a trusted lease
    assert record.startedAt >= trusted_until  # type: ignore[attr-defined]  # and the record says it acted late
    assert record.startedAt <= started[0]  # type: ignore[attr-defined]
