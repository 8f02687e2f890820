"""Security headers on every response, error pages and the documentation included."""

from __future__ import annotations

from typing import Final

from starlette.types import Scope

# One policy for everything: JSON answers need nothing, and the self-hosted Swagger UI needs
# only its own scripts, its stylesheet, inline style attributes (it sets them from React) and
# data: images (its icons). No third-party origin, no inline script, no framing.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HSTS: Final = "max-age=63072000; includeSubDomains"

_ALWAYS: Final = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def came_over_https(scope: Scope) -> bool:
    """True when the client used TLS: directly, or as the proxy in front of us reports it.

    Trusting X-Forwarded-Proto from anyone is harmless here: browsers ignore HSTS received
    over plain HTTP, so a forged header cannot pin anything.
    """
    if scope.get("scheme") == "https":
        return True
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-forwarded-proto":
            return value.decode("latin-1").split(",")[0].strip().lower() == "https"
    return False


_OVER_HTTPS: Final = [*_ALWAYS, (b"strict-transport-security", HSTS.encode())]


def security_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The headers every answer to this request carries (added by the edge middleware unless the
    endpoint set one itself)."""
    return _OVER_HTTPS if came_over_https(scope) else _ALWAYS
