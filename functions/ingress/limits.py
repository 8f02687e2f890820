"""Per-tenant rate limit: RATE_LIMIT_PER_MINUTE requests in any 60-second window.

The window is a moving window kept by the `limits` library in this process's memory, so the
limit holds per API instance: N instances behind a load balancer let a tenant make up to N
times the limit. That is the trade made for no extra round trip per request; a shared limit
would need Redis or a Postgres counter.

The middleware verifies the bearer token itself (it must know the tenant before the endpoint
does any work) and leaves the principal in the request state, so `authenticate` does not decode
it twice. A missing or bad token passes through untouched: the endpoint answers 401 (or needs
no token at all, like /health).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RateLimited, Unauthorized
from shared.settings import Settings
from shared.tokens import Principal, verify_token

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
    """A moving-window limit of `per_minute` requests for each caller key."""

    def __init__(self, per_minute: int) -> None:
        self.item = RateLimitItemPerMinute(per_minute)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def hit(self, key: str) -> Quota:
        """Count one request for `key` (a refused request is not counted)."""
        allowed = await self.limiter.hit(self.item, key)
        stats = await self.limiter.get_window_stats(self.item, key)
        # At least one second: `Retry-After: 0` would invite an immediate, equally refused retry.
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        return Quota(limit=self.item.amount, remaining=max(0, stats.remaining), reset_seconds=reset, allowed=allowed)


def caller_key(principal: Principal) -> str:
    """Whose budget a request spends: its tenant's, or a tenant-less admin token's own."""
    return f"tenant:{principal.tenant_id}" if principal.tenant_id else f"subject:{principal.subject}"


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class RateLimitMiddleware:
    """429 with Retry-After once a tenant spent its budget; RateLimit-* headers on every answer."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limiter = TenantRateLimiter(settings.rate_limit_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = bearer_token(scope) if scope["type"] == "http" else None
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            principal = verify_token(token, self.settings)
        except Unauthorized:
            await self.app(scope, receive, send)  # the endpoint answers 401 with its own detail
            return
        scope.setdefault("state", {})["principal"] = principal
        quota = await self.limiter.hit(caller_key(principal))
        headers = quota.headers()
        if not quota.allowed:
            error = RateLimited(
                f"more than {quota.limit} requests in {WINDOW_SECONDS} seconds; retry in {quota.reset_seconds}s",
                headers=headers,
            )
            await problem_asgi_response(error, scope, send)
            return
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *raw]
            await send(message)

        await self.app(scope, receive, send_with_quota)
