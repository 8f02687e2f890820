"""The machine's process: read the contract, run the machine, exit with its code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import uvloop
from pydantic import ValidationError

from functions.registry import handler_module, load_registry
from shared.configuration import ConfigurationError, check_configuration
from shared.db.pool import open_pool
from shared.logging import bind_context, configure_logging
from shared.settings import Settings, load_settings
from shared.telemetry import emit
from shared.vocabulary import Event as EventName

from .config import CHECKOUT_TIMEOUT_SECONDS, EXIT_CONFIG, EXIT_SELF_FENCED, EXIT_TIMED_OUT, MachineConfig
from .machine import Machine

logger = logging.getLogger("functions.machine")


async def main_async(settings: Settings, config: MachineConfig) -> int:
    bind_context(machineId=config.machine_id, queue=config.queue)
    handler = handler_module(load_registry()[config.queue])
    if config.queue == "default":
        from functions.handlers.default import load_function_modules

        load_function_modules(settings.default_function_modules)
    # A short checkout wait: with the database away, every part of the machine learns it in
    # seconds and retries, or fences itself, instead of waiting 30 s per attempt.
    pool = await open_pool(
        settings.database_url, min_size=1, max_size=config.concurrency + 2, checkout_timeout=CHECKOUT_TIMEOUT_SECONDS
    )
    machine = Machine(settings=settings, config=config, handler=handler, pool=pool)
    loop = asyncio.get_running_loop()
    shutdown_tasks: set[asyncio.Task[None]] = set()

    def on_sigterm() -> None:
        task = asyncio.create_task(machine.shutdown())
        shutdown_tasks.add(task)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigterm)
    emit(EventName.QUEUE_START)
    try:
        code = await machine.run()
    finally:
        emit(EventName.QUEUE_STOP, jobsStarted=machine.started_jobs)
        await asyncio.gather(*shutdown_tasks, return_exceptions=True)
        closer = getattr(handler, "close", None)
        if closer is not None:
            await closer(machine.base_ctx)
        outbound = machine.base_ctx.resources.get("outbound")
        if outbound is not None:
            await outbound.aclose()
        with contextlib.suppress(Exception):
            await pool.close()
    if code in (EXIT_TIMED_OUT, EXIT_SELF_FENCED):
        # A handler's thread may still be running (it overran, or was abandoned), and leaving
        # asyncio.run would wait for it: end the process here, so its work really stops.
        logger.info("machine exited", extra={"exitCode": code})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main() -> int:
    try:
        settings = load_settings()
    except ValidationError as exc:
        configure_logging("info", service="machine")
        logger.error("bad machine configuration", extra={"error": str(exc)})
        return EXIT_CONFIG
    configure_logging(settings.log_level, service="machine")
    registry = load_registry()
    try:
        config = MachineConfig.from_env(settings, dict(os.environ), queues=registry)
        check_configuration(settings, registry, role="machine", queue=config.queue)
    except (ValueError, ConfigurationError) as exc:
        logger.error("bad machine configuration", extra={"error": str(exc)})
        return EXIT_CONFIG
    # uvloop: the machine is a loop of small database round trips; its event loop costs less per
    # wake-up than asyncio's (bench: engine row).
    code = uvloop.run(main_async(settings, config))
    logger.info("machine exited", extra={"exitCode": code})
    return code
