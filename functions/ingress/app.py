"""The ingress: a Starlette app that validates requests, writes jobs, and reports on them.

`create_app(settings)` builds it; `uvicorn functions.ingress.app:create_app --factory` serves it.
With RUN_DISPATCHER=true (the default; `make dev`) the dispatcher runs inside the same process.

Middleware, outermost first (each sees what the ones inside it answer):
edge (request id, access log, metrics, security headers) -> CORS -> rate limit -> 500 catcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Callable
from functools import cache

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from functions.handlers.default import load_function_modules
from functions.registry import load_registry, machine_program, seed_queues
from shared.configuration import check_configuration
from shared.db.pool import open_pool
from shared.errors import MethodNotAllowed, NotFound, ProblemError
from shared.logging import configure_logging
from shared.settings import Settings, load_settings

from . import (
    admin,
    batches,
    dashboard,
    events,
    idempotency,
    jobs,
    queue_rules,
    schedules,
    uploads,
    webhook_secret,
    workflows,
)
from .access_log import EdgeMiddleware
from .batch_insert import BatchInserter
from .docs import Documentation
from .event_hub import EventHub
from .http import UnhandledErrorMiddleware, problem_response
from .limits import RateLimitMiddleware
from .metrics import AppMetrics, EventHubCollector, metrics_endpoint
from .shutdown_signals import chain_shutdown_signals

logger = logging.getLogger("functions.ingress")

# Headers a browser client may send cross-origin, and the ones it may read back.
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "Last-Event-ID"]
CORS_EXPOSED_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Idempotent-Replayed",
]


class _QueueConvertor(Convertor[str]):
    """A path segment naming one of the function queues."""

    regex = "|".join(re.escape(queue) for queue in sorted(load_registry(), key=len, reverse=True))

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _DigitsConvertor(Convertor[str]):
    """A job id segment: digits, kept as text (the endpoint answers 404 for absurd lengths)."""

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Distinct shapes for `/jobs/{queue}` and `/jobs/{id}`, so that `GET /jobs/images` or `POST /jobs/1`
# is a 405 naming the right `Allow`, not a 404 from whichever route happened to come first.
register_url_convertor("cp_queue", _QueueConvertor())
register_url_convertor("cp_job_id", _DigitsConvertor())


async def _jobs_collection(request: Request) -> Response:
    """GET and DELETE /jobs share one route, so a 405 there lists both in `Allow`."""
    if request.method == "DELETE":
        return await jobs.cancel_jobs(request)
    return await jobs.list_jobs(request)


def routes() -> list[BaseRoute]:
    return [
        Route("/jobs/emails/bulk", jobs.create_bulk_emails, methods=["POST"]),
        Route("/jobs/batch", batches.create_batch, methods=["POST"]),
        Route("/batches/{id:str}", batches.get_batch, methods=["GET"]),
        Route("/workflows", workflows.create_workflow, methods=["POST"]),
        Route("/workflows/{id:str}", workflows.get_workflow, methods=["GET"]),
        Route("/workflows/{id:str}/cancel", workflows.cancel_workflow, methods=["POST"]),
        Route("/workflows/{id:str}/retry", workflows.retry_workflow, methods=["POST"]),
        Route("/schedules", schedules.schedules_collection, methods=["GET", "POST"]),
        Route("/schedules/{id:str}", schedules.schedule_item, methods=["GET", "DELETE"]),
        Route("/schedules/{id:str}/pause", schedules.pause_schedule, methods=["POST"]),
        Route("/schedules/{id:str}/resume", schedules.resume_schedule, methods=["POST"]),
        Route("/jobs/{queue:cp_queue}", jobs.create_job, methods=["POST"]),
        Route("/jobs/{job_id:cp_job_id}", jobs.get_job, methods=["GET"]),
        Route("/jobs/{job_id:cp_job_id}/retry", jobs.retry_job, methods=["POST"]),
        Route("/jobs/{job_id:cp_job_id}/events", jobs.get_job_events, methods=["GET"]),
        Route("/events", events.stream_events, methods=["GET"]),
        Route("/webhooks/secret", webhook_secret.get_webhook_secret, methods=["GET"]),
        Route("/jobs", _jobs_collection, methods=["GET", "DELETE"]),
        Route("/uploads", uploads.create_upload, methods=["POST"]),
        Route("/health", admin.health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/admin/queues", admin.list_queues, methods=["GET"]),
        Route("/admin/queues/{name:str}", admin.get_queue, methods=["GET"]),
        Route("/admin/queues/{name:str}/pause", admin.pause_queue, methods=["POST"]),
        Route("/admin/queues/{name:str}/resume", admin.resume_queue, methods=["POST"]),
        Route("/admin/queues/{name:str}/scale", admin.scale_queue, methods=["POST"]),
        Route("/admin/queues/{name:str}/limits", queue_rules.limits, methods=["GET", "PUT"]),
        Route("/admin/jobs/prune", admin.prune_jobs, methods=["POST"]),
        Route("/admin/jobs/rescue", admin.rescue_jobs, methods=["POST"]),
        Route("/admin/machines", admin.list_machines, methods=["GET"]),
        *Documentation().routes(),
        *dashboard.routes(),  # the web dashboard (HTML; not in the API document)
    ]


async def _problem(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ProblemError):
        return problem_response(exc, request)
    if isinstance(exc, HTTPException):
        mapped: ProblemError = (
            NotFound("no such route")
            if exc.status_code == 404
            else MethodNotAllowed(f"{request.method} is not allowed here", headers=dict(exc.headers or {}))
            if exc.status_code == 405
            else ProblemError(str(exc.detail))
        )
        return problem_response(mapped, request)
    raise exc  # UnhandledErrorMiddleware answers (inside the other middleware, so with their headers)


def _storage_factory(settings: Settings) -> Callable[[], object]:
    @cache
    def storage() -> object:
        from shared.storage import Storage

        return Storage(settings)

    return storage


def middleware(settings: Settings, metrics: AppMetrics) -> list[Middleware]:
    stack = [
        Middleware(EdgeMiddleware, metrics=metrics),  # request id, access log, metrics, security headers
    ]
    if settings.cors_origins:
        # Only the configured origins; with none configured there is no CORS at all.
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_EXPOSED_HEADERS,
                max_age=600,
            )
        )
    stack += [Middleware(RateLimitMiddleware, settings=settings), Middleware(UnhandledErrorMiddleware)]
    return stack


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; the lifespan opens the pool and, when configured, runs the dispatcher.

    Without `settings` (the `uvicorn ... --factory` entry point) it reads them from the
    environment and sets up JSON logging for the process; callers passing settings own logging.
    """
    if settings is None:
        settings = load_settings()
        configure_logging(settings.log_level, service="api")
    load_function_modules(settings.default_function_modules)
    registry = load_registry()
    check_configuration(settings, registry, role="api")
    metrics = AppMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.registry = registry
        app.state.metrics = metrics
        app.state.storage = _storage_factory(settings)
        app.state.pool = await open_pool(settings.database_url, max_size=settings.database_pool_size)
        await asyncio.to_thread(seed_queues, settings.database_url, settings, registry)
        app.state.dispatcher = None
        # Plain job inserts from concurrent requests share one statement and one commit.
        app.state.batch_inserter = BatchInserter(app.state.pool)
        app.state.batch_inserter.start()
        metrics.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(idempotency.run_pruner(app.state.pool, stop), name="idempotency-pruner")]
        # One LISTEN connection fans job events out to every stream and waiting request.
        app.state.event_hub = EventHub(settings, app.state.pool)
        hub_metrics = EventHubCollector(app.state.event_hub)
        metrics.registry.register(hub_metrics)
        tasks.append(asyncio.create_task(app.state.event_hub.run(stop), name="event-hub"))
        # Streams end as soon as the server is told to stop (see shutdown_signals); a server run
        # from a thread (tests) calls app.state.begin_shutdown itself, as a signal would.
        loop = asyncio.get_running_loop()
        app.state.begin_shutdown = functools.partial(loop.call_soon_threadsafe, app.state.event_hub.close_streams)
        launcher = None
        if settings.run_dispatcher:
            from functions.dispatcher.leader import Dispatcher
            from shared.launchers import make_launcher

            launcher = make_launcher(settings, machine_program())
            app.state.dispatcher = Dispatcher(settings, app.state.pool, launcher)
            tasks.append(asyncio.create_task(app.state.dispatcher.run(stop), name="dispatcher"))
        restore_signals = chain_shutdown_signals(app.state.begin_shutdown)
        try:
            yield
        finally:
            # SIGTERM: uvicorn stops accepting, finishes in-flight requests, then runs this.
            restore_signals()
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await app.state.batch_inserter.close()
            if launcher is not None:
                await launcher.aclose()
            metrics.close()
            metrics.registry.unregister(hub_metrics)  # a second start of this app registers its own
            await app.state.pool.close()
            logger.info("ingress stopped")

    return Starlette(
        routes=routes(),
        middleware=middleware(settings, metrics),
        exception_handlers={HTTPException: _problem, ProblemError: _problem},
        lifespan=lifespan,
    )
