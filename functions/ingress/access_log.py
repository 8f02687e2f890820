"""One JSON log line per HTTP request, carrying the request's context (requestId, tenantId, jobId)."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import route_template

logger = logging.getLogger("functions.ingress.access")


class AccessLogMiddleware:
    """Log `http:request` with method, route template, path, status and duration.

    It sits inside RequestIdMiddleware, and endpoints run in the same task, so the ids an
    endpoint binds (tenantId after authentication, jobId after an insert) are still in the log
    context when this line is written.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            logger.info(
                "http:request",
                extra={
                    "method": scope["method"],
                    "route": route_template(scope),
                    "path": scope["path"],
                    "status": status,
                    "durationMs": round((time.perf_counter() - started) * 1000, 2),
                },
            )
