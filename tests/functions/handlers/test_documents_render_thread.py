"""Render work under a deadline: results and errors come back; overruns and cancellations stop the thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from functions.handlers.lib.render_thread import RenderTimedOut, run_with_deadline


def spin(stop: threading.Event, started: threading.Event) -> None:
    """Pure Python work that never ends by itself (like a runaway layout)."""
    started.set()
    count = 0
    while not stop.is_set():
        count += 1


async def test_returns_the_result() -> None:
    assert await run_with_deadline(lambda: 6 * 7, seconds=30) == 42


async def test_raises_what_the_work_raised() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await run_with_deadline(fail, seconds=30)


async def test_overrun_is_interrupted_and_the_thread_ends() -> None:
    never, started = threading.Event(), threading.Event()
    with pytest.raises(RenderTimedOut) as caught:
        await run_with_deadline(lambda: spin(never, started), seconds=0.5, name="spin")
    assert started.is_set()
    assert caught.value.stopped  # the loop never checks `never`: only the interrupt ended it


async def test_cancellation_interrupts_the_thread() -> None:
    never, started = threading.Event(), threading.Event()
    finished = threading.Event()

    def work() -> None:
        try:
            spin(never, started)
        finally:
            finished.set()

    task = asyncio.create_task(run_with_deadline(work, seconds=60, name="cancelled"))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(finished.wait, 30)
