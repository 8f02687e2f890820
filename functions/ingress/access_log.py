"""The outermost layer of every HTTP request: its id, its access log line, its metrics, and the
security headers of its answer.

These four used to be four middlewares, each wrapping the call and every message sent; one
layer does the same work with one wrapper.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import log_context

from .http import request_id_of
from .metrics import AppMetrics, route_template
from .security_headers import security_headers

logger = logging.getLogger("functions.ingress.access")


class EdgeMiddleware:
    """Per HTTP request:

    - request id: accept a sane X-Request-ID or make one; echo it and put it on every log line;
    - access log: one `http:request` line with method, route template, path, status and duration;
    - metrics: count and time the request by method, route template and status;
    - security headers on every answer (error pages and documentation included) that the
      endpoint did not set itself.

    Endpoints run in the same task, so the ids an endpoint binds (tenantId after authentication,
    jobId after an insert) are still in the log context when the access line is written.
    """

    def __init__(self, app: ASGIApp, *, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())
        extra = security_headers(scope)
        status = 500

        async def edge_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = message.get("headers", [])
                present = {name.lower() for name, _ in headers}
                message["headers"] = [*headers, *(h for h in extra if h[0] not in present), id_header]
            await send(message)

        with log_context(requestId=request_id):
            try:
                await self.app(scope, receive, edge_send)
            finally:
                seconds = time.perf_counter() - started
                method, route = scope["method"], route_template(scope)
                self.metrics.observe(method, route, status, seconds)
                logger.info(
                    "http:request",
                    extra={
                        "method": method,
                        "route": route,
                        "path": scope["path"],
                        "status": status,
                        "durationMs": round(seconds * 1000, 2),
                    },
                )
