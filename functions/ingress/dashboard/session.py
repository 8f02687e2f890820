"""Dashboard sign-in: the bearer token kept in a cookie, a CSRF token per session, Origin checks.

The cookie holds the token itself (HttpOnly, SameSite=Strict, Path=/dashboard, Secure over https),
so a session lasts exactly as long as its token and signing out is forgetting the cookie. Every
form carries a CSRF token, HMAC(key, token), where the key is derived from JWT_SECRET: it cannot be
computed without the secret and changes with the session. Every POST must carry it and, when the
browser names one, come from our own origin. SameSite=Strict alone would already keep other
sites' forms from riding the session; the token and the Origin check do not rely on it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from shared.errors import ProblemError
from shared.settings import Settings
from shared.tokens import Principal, verify_token

from ..security_headers import came_over_https

COOKIE: Final = "cp_dashboard"
# A nonce for the sign-in form (there is no session yet to bind its CSRF token to).
LOGIN_COOKIE: Final = "cp_dashboard_login"
PATH: Final = "/dashboard"
_LABEL: Final = b"content-processor/dashboard/v1"


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    principal: Principal
    csrf: str

    @property
    def tenant(self) -> str | None:
        """The tenant every read and action is limited to; None (all tenants) for admins."""
        return None if self.principal.is_admin else self.principal.tenant_id


class SignInRequired(Exception):
    """No session, or its token was refused; `reason` is shown on the sign-in page."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _key(settings: Settings) -> bytes:
    if settings.jwt_secret is None:
        raise SignInRequired("this server has no JWT_SECRET configured")
    return hmac.new(settings.jwt_secret.get_secret_value().encode(), _LABEL, hashlib.sha256).digest()


def _mac(settings: Settings, purpose: str, value: str) -> str:
    return hmac.new(_key(settings), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def principal_of(token: str, settings: Settings) -> Principal:
    """The token's principal; SignInRequired with the reason when it is refused or cannot read."""
    try:
        principal = verify_token(token, settings)
    except ProblemError as exc:
        raise SignInRequired(exc.detail) from None
    if "jobs:read" not in principal.scopes and not principal.is_admin:
        raise SignInRequired("this token lacks the 'jobs:read' scope")
    return principal


def current(request: Request) -> Session:
    """The signed-in session; SignInRequired when there is none or its token no longer holds."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired(None)
    settings: Settings = request.app.state.settings
    principal = principal_of(token, settings)
    return Session(token=token, principal=principal, csrf=_mac(settings, "csrf", token))


def csrf_ok(request: Request, session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")


def login_nonce(request: Request) -> str:
    """The sign-in form's nonce: the one its cookie already holds, or a new one."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)


def login_csrf(settings: Settings, nonce: str) -> str:
    return _mac(settings, "login", nonce)


def login_csrf_ok(request: Request, submitted: str | None) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not submitted:
        return False
    return hmac.compare_digest(login_csrf(request.app.state.settings, nonce), submitted)


def same_origin(request: Request) -> bool:
    """False when the browser says the request came from another site (Origin, else Sec-Fetch-Site)."""
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if origin is not None and origin != "null":
        scheme = "https" if came_over_https(request.scope) else "http"
        return origin == f"{scheme}://{request.headers.get('host', '')}"
    if origin == "null":
        # An opaque origin: a browser hiding it (a no-referrer page) or a sandboxed frame anywhere.
        return fetch_site == "same-origin"
    return fetch_site in (None, "same-origin", "none")


def _set(request: Request, response: Response, name: str, value: str, path: str) -> None:
    response.set_cookie(name, value, path=path, httponly=True, samesite="strict", secure=came_over_https(request.scope))


def start(request: Request, response: Response, token: str) -> None:
    _set(request, response, COOKIE, token, PATH)
    response.delete_cookie(LOGIN_COOKIE, path=f"{PATH}/login")


def remember_login_nonce(request: Request, response: Response, nonce: str) -> None:
    _set(request, response, LOGIN_COOKIE, nonce, f"{PATH}/login")


def end(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict", secure=came_over_https(request.scope))
