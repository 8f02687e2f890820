"""Who may call what: bearer tokens to a Principal, scopes, and the tenant a request acts for."""

from __future__ import annotations

from starlette.requests import Request

from shared.errors import Forbidden, Unauthorized, ValidationFailed
from shared.logging import bind_context
from shared.settings import Settings
from shared.tokens import Principal, verify_token


def authenticate(request: Request, scope: str) -> Principal:
    """The caller's principal, holding `scope` (admin holds every scope). 401 / 403 otherwise."""
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    # The rate limiter already verified this very token to find the tenant; don't decode it twice.
    verified = request.scope.get("state", {}).get("principal")
    principal = verified if isinstance(verified, Principal) else verify_token(token.strip(), settings)
    if scope not in principal.scopes and not principal.is_admin:
        raise Forbidden(f"this token lacks the {scope!r} scope")
    request.state.principal = principal
    bind_context(tenantId=principal.tenant_id)
    return principal


def acting_tenant(principal: Principal, requested: str | None) -> str:
    """The tenant a write acts for: the token's, or any for an admin. 403 for a mismatch."""
    if requested is not None and requested != principal.tenant_id:
        if not principal.is_admin:
            raise Forbidden("tenantId does not match the token's tenant")
        return requested
    if principal.tenant_id is None:
        raise ValidationFailed(
            "an admin token without a tenant must name one",
            errors=[{"path": "tenantId", "message": "required for a token without a tenant"}],
        )
    return principal.tenant_id


def reading_tenant(principal: Principal) -> str | None:
    """The tenant a read is limited to; None (every tenant) only for admin tokens."""
    return None if principal.is_admin else principal.tenant_id
