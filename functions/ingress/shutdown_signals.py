"""End the app's open event streams as soon as the server is told to stop.

uvicorn's graceful shutdown waits for every response in flight before it runs the app's
lifespan shutdown, and an event stream never finishes by itself: each one held the process for
the whole `--timeout-graceful-shutdown` (20 s on Fly) and was then cut off mid-stream. uvicorn
tells the app nothing before that, so the app puts its own handler in front of uvicorn's for
SIGTERM and SIGINT: it schedules the streams' end on the event loop, then hands the signal on.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
logger = logging.getLogger("functions.ingress")


def chain_shutdown_signals(on_signal: Callable[[], None]) -> Callable[[], None]:
    """Call `on_signal` when SIGTERM or SIGINT arrives, then whatever handled it before. It runs
    inside the signal handler: it must only schedule work (`loop.call_soon_threadsafe`). Returns a
    function that puts the previous handlers back. Does nothing outside the main thread, where
    Python cannot handle signals (a server run from a thread is stopped by its owner)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            on_signal()
        except Exception:  # raised here it would land in whatever code the signal interrupted
            logger.exception("ending the event streams on %s failed", signal.Signals(signum).name)
        finally:  # the signal reaches its previous handler whatever happened above
            before = previous.get(signum)
            if callable(before):
                before(signum, frame)
            elif before == signal.SIG_DFL:  # no one else handles it: its default action, as before
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

    for signum in HANDLED_SIGNALS:
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:  # uvicorn may have restored its own already
                signal.signal(signum, before if before is not None else signal.SIG_DFL)

    return restore
