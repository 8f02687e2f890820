"""Per-tenant rate limit: RATE_LIMIT_PER_MINUTE requests in any 60-second window.

The window is a moving window kept in this process's memory (a deque of hit times per tenant), so the
limit holds per API instance: N instances behind a load balancer let a tenant make up to N
times the limit. That is the trade made for no extra round trip per request; a shared limit
would need Redis or a Postgres counter.

The middleware verifies the bearer token itself (it must know the tenant before the endpoint
does any work) and leaves the principal in the request state, so `authenticate` does not decode
it twice. A missing or bad token passes through untouched: the endpoint answers 401 (or needs
no token at all, like /health). The dashboard authenticates with the same tokens, kept in its
session cookie: its pages and actions are limited too, per tenant, on a budget beside
the tenant's API budget (a dashboard refreshes itself while jobs change, which must not eat it).
What is counted there is exactly what the dashboard signs in with: the cookie, never a header.
"""

from __future__ import annotations

import html
import math
import time
from collections import deque
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RateLimited, Unauthorized
from shared.settings import Settings
from shared.tokens import Principal, verify_token

from .dashboard.session import COOKIE as SESSION_COOKIE
from .dashboard.session import PATH as DASHBOARD_PATH
from .http import problem_asgi_response

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a caller stands after one request: the IETF RateLimit header values."""

    limit: int
    remaining: int
    reset_seconds: int
    allowed: bool

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={WINDOW_SECONDS}",
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


class TenantRateLimiter:
    """A moving-window limit of `per_minute` requests for each caller key.

    Each key keeps the times of its counted requests of the last WINDOW_SECONDS, oldest first, so
    a hit drops what fell out of the window and appends: amortised O(1), no lock (the event loop
    runs one hit at a time), no thread hop. Keys idle for a whole window are swept once a window.
    """

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self._hits: dict[str, deque[float]] = {}
        self._swept_at = time.monotonic()

    async def hit(self, key: str) -> Quota:
        """Count one request for `key` (a refused request is not counted)."""
        now = time.monotonic()
        start = now - WINDOW_SECONDS
        if now - self._swept_at > WINDOW_SECONDS:
            self._sweep(start)
            self._swept_at = now
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        while hits and hits[0] <= start:
            hits.popleft()
        allowed = len(hits) < self.limit
        if allowed:
            hits.append(now)
        # The window frees its first slot when its oldest counted request leaves it. At least one
        # second: `Retry-After: 0` would invite an immediate, equally refused retry.
        oldest = hits[0] if hits else now
        reset = max(1, math.ceil(oldest + WINDOW_SECONDS - now))
        return Quota(limit=self.limit, remaining=max(0, self.limit - len(hits)), reset_seconds=reset, allowed=allowed)

    def _sweep(self, start: float) -> None:
        for key in [key for key, hits in self._hits.items() if not hits or hits[-1] <= start]:
            del self._hits[key]


def caller_key(principal: Principal) -> str:
    """Whose budget a request spends: its tenant's, or a tenant-less admin token's own."""
    return f"tenant:{principal.tenant_id}" if principal.tenant_id else f"subject:{principal.subject}"


def dashboard_key(principal: Principal) -> str:
    """The dashboard's budget: per tenant, as the API's (every user, tab and token of the tenant
    shares it), from the verified principal, never the token's text, which has more than one
    spelling (base64 padding) for one token."""
    return "dashboard:" + caller_key(principal)


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def on_dashboard(path: str) -> bool:
    return path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")


def counted_session_token(scope: Scope) -> str | None:
    """On a dashboard path: the session cookie's token, read exactly as the dashboard reads it
    (it never reads Authorization), unless the path is free: static files, signing in and out,
    and the live stream (bounded by the event hub's per-tenant stream limit)."""
    path: str = scope["path"]
    if path in _FREE or path.startswith(_STATIC):
        return None
    token = Request(scope).cookies.get(SESSION_COOKIE)
    return token or None


_STATIC = DASHBOARD_PATH + "/static/"
_FREE = frozenset({DASHBOARD_PATH + "/login", DASHBOARD_PATH + "/logout", DASHBOARD_PATH + "/events"})


class RateLimitMiddleware:
    """429 with Retry-After once a tenant spent its budget; RateLimit-* headers on every answer."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limiter = TenantRateLimiter(settings.rate_limit_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        dashboard = on_dashboard(scope["path"])
        token = counted_session_token(scope) if dashboard else bearer_token(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            principal = verify_token(token, self.settings)
        except Unauthorized:
            await self.app(scope, receive, send)  # the endpoint answers 401 (the dashboard: sign-in)
            return
        if not dashboard:  # what `authenticate` reads instead of decoding the header again
            scope.setdefault("state", {})["principal"] = principal
        quota = await self.limiter.hit(dashboard_key(principal) if dashboard else caller_key(principal))
        headers = quota.headers()
        if not quota.allowed:
            detail = f"more than {quota.limit} requests in {WINDOW_SECONDS} seconds; retry in {quota.reset_seconds}s"
            if dashboard:  # a page in a browser: a page, not JSON
                page = (
                    f"<!doctype html><title>Too many requests</title><p>Too many requests: {html.escape(detail)}.</p>"
                )
                no_store = {**headers, "Cache-Control": "no-store"}  # as every dashboard page
                await HTMLResponse(page, status_code=429, headers=no_store)(scope, receive, send)
            else:
                await problem_asgi_response(RateLimited(detail, headers=headers), scope, send)
            return
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *raw]
            await send(message)

        await self.app(scope, receive, send_with_quota)
