"""`python -m functions.dispatcher`: the dispatcher as its own process (Fly's dispatcher group)."""

from __future__ import annotations

import asyncio
import signal

from functions.registry import load_registry, machine_program, seed_queues
from shared.configuration import check_configuration
from shared.db.pool import open_pool
from shared.launchers import make_launcher
from shared.logging import configure_logging
from shared.settings import load_settings

from .leader import Dispatcher


async def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, service="dispatcher")
    registry = load_registry()
    check_configuration(settings, registry, role="dispatcher")  # every problem, in one message
    await asyncio.to_thread(seed_queues, settings.database_url, settings, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await open_pool(settings.database_url, max_size=8)  # five duty loops, control messages
    launcher = make_launcher(settings, machine_program(registry))
    try:
        await Dispatcher(settings, pool, launcher).run(stop)
    finally:
        await launcher.aclose()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
