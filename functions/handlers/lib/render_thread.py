"""Run blocking render work in a thread with a deadline, and stop the thread when the deadline passes.

A Python thread cannot be killed, and WeasyPrint has no cancellation hook. So when the deadline
passes (or the job is cancelled), we ask CPython to raise `RenderInterrupted` inside the thread at
its next bytecode (`PyThreadState_SetAsyncExc`). WeasyPrint's layout and Jinja2's templates are
Python code, so a runaway render stops within moments and the machine can take the next job.
What this cannot stop: one long call into C (a single huge Pango layout) only notices when it
returns, and memory is not bounded here. The machine's per-function timeout
(WORKER_DOCUMENTS_TIMEOUT) and its memory limit stay the hard stops.

`RenderInterrupted` derives from BaseException so that the `except Exception` blocks inside
WeasyPrint and Jinja2 (which log and carry on) do not swallow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections.abc import Callable
from typing import Final, TypeVar

T = TypeVar("T")

# After asking a thread to stop, how long to wait for it to unwind before giving up on it.
STOP_GRACE_SECONDS: Final = 5.0


class RenderInterrupted(BaseException):
    """Raised inside a render thread to make it unwind (deadline passed or job cancelled)."""


class RenderTimedOut(Exception):
    """The work did not finish before its deadline; `stopped` says whether its thread has ended."""

    def __init__(self, seconds: float, *, stopped: bool) -> None:
        super().__init__(f"rendering took longer than {seconds:g}s")
        self.stopped = stopped


async def run_with_deadline(work: Callable[[], T], *, seconds: float, name: str = "render") -> T:
    """Run `work()` in a daemon thread and return its result.

    Raises RenderTimedOut when it runs past `seconds` (after interrupting the thread), re-raises
    whatever `work` raised, and on cancellation interrupts the thread before re-raising.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            try:
                result, error = work(), None
            except RenderInterrupted:
                return  # we asked for this; the awaiting side already knows why
            except BaseException as exc:
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed if the machine is exiting
                loop.call_soon_threadsafe(settle, result, error)
        except RenderInterrupted:
            pass  # the interrupt landed after the work was done
        finally:
            finished.set()

    finished = threading.Event()
    # A daemon thread never keeps the process alive at exit, even if it ignores the interrupt.
    thread = threading.Thread(target=target, name=f"{name}-thread", daemon=True)
    thread.start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), timeout=seconds)
    except TimeoutError:
        done.cancel()  # a late result or error has nobody to go to
        stopped = await _stop(thread, finished)
        raise RenderTimedOut(seconds, stopped=stopped) from None
    except asyncio.CancelledError:
        done.cancel()
        _interrupt(thread)
        raise


async def _stop(thread: threading.Thread, finished: threading.Event) -> bool:
    _interrupt(thread)
    return await asyncio.to_thread(finished.wait, STOP_GRACE_SECONDS)


def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is None or not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(RenderInterrupted))
