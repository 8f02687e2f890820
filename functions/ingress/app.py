"""The ingress: a Starlette app that validates requests, writes jobs, and reports on them.

`create_app(settings)` builds it; `uvicorn functions.ingress.app:create_app --factory` serves it.
With RUN_DISPATCHER=true (the default; `make dev`) the dispatcher runs inside the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import cache

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from functions.handlers.default import load_function_modules
from shared.db.pool import open_pool
from shared.errors import MethodNotAllowed, NotFound, ProblemError
from shared.settings import Settings, load_settings

from . import admin, jobs, uploads
from .http import RequestIdMiddleware, problem_response

logger = logging.getLogger("functions.ingress")


def routes() -> list[Route]:
    return [
        Route("/jobs/emails/bulk", jobs.create_bulk_emails, methods=["POST"]),
        Route("/jobs/{queue:str}", jobs.create_job, methods=["POST"]),
        Route("/jobs/{job_id:str}", jobs.get_job, methods=["GET"]),
        Route("/jobs/{job_id:str}/retry", jobs.retry_job, methods=["POST"]),
        Route("/jobs", jobs.list_jobs, methods=["GET"]),
        Route("/jobs", jobs.cancel_jobs, methods=["DELETE"]),
        Route("/uploads", uploads.create_upload, methods=["POST"]),
        Route("/health", admin.health, methods=["GET"]),
        Route("/admin/queues", admin.list_queues, methods=["GET"]),
        Route("/admin/queues/{name:str}", admin.get_queue, methods=["GET"]),
        Route("/admin/queues/{name:str}/pause", admin.pause_queue, methods=["POST"]),
        Route("/admin/queues/{name:str}/resume", admin.resume_queue, methods=["POST"]),
        Route("/admin/queues/{name:str}/scale", admin.scale_queue, methods=["POST"]),
        Route("/admin/jobs/prune", admin.prune_jobs, methods=["POST"]),
        Route("/admin/jobs/rescue", admin.rescue_jobs, methods=["POST"]),
        Route("/admin/machines", admin.list_machines, methods=["GET"]),
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
    logger.exception("unhandled error")
    return problem_response(ProblemError("an unexpected error occurred"), request)


def _storage_factory(settings: Settings) -> Callable[[], object]:
    @cache
    def storage() -> object:
        from shared.storage import Storage

        return Storage(settings)

    return storage


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; the lifespan opens the pool and, when configured, runs the dispatcher."""
    settings = settings or load_settings()
    load_function_modules(settings.default_function_modules)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.storage = _storage_factory(settings)
        app.state.pool = await open_pool(settings.database_url, max_size=settings.database_pool_size)
        app.state.dispatcher = None
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        launcher = None
        if settings.run_dispatcher:
            from functions.dispatcher.leader import Dispatcher
            from shared.launchers import make_launcher

            launcher = make_launcher(settings)
            app.state.dispatcher = Dispatcher(settings, app.state.pool, launcher)
            task = asyncio.create_task(app.state.dispatcher.run(stop))
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=10)
            if launcher is not None:
                await launcher.aclose()
            await app.state.pool.close()

    app = Starlette(
        routes=routes(),
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={Exception: _problem, HTTPException: _problem, ProblemError: _problem},
        lifespan=lifespan,
    )
    return app
