"""JWT bearer tokens: verify (algorithm pinned, `exp` required) and mint (`python -m shared.tokens`)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from shared.errors import Unauthorized
from shared.settings import Settings, load_settings

ALGORITHM = "HS256"
SCOPES = ("jobs:write", "jobs:read", "admin")
# The same rule as a `tenantId` in a request body (shared/schemas/common.py).
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: subject, tenant (None for a tenant-less admin token) and scopes."""

    subject: str
    tenant_id: str | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def _secret(settings: Settings) -> str:
    if settings.jwt_secret is None:
        raise Unauthorized("this server has no JWT_SECRET configured")
    return settings.jwt_secret.get_secret_value()


# Verified tokens, so a client sending the same token on every request does not pay for an HMAC
# and a claims parse each time. Keyed by the raw token and everything its verification depended on
# (secret, audience, issuer); an entry is used only before the token's `exp` (checked on every
# hit), and only successes are kept. Bounded: least recently used entries go first.
_CACHE_SIZE = 4096
_verified: OrderedDict[tuple[str, str, str | None, str | None], tuple[Principal, float]] = OrderedDict()


def verify_token(token: str, settings: Settings) -> Principal:
    """Decode and check a bearer token. Raises Unauthorized for anything invalid or expired."""
    key = (token, _secret(settings), settings.jwt_audience, settings.jwt_issuer)
    cached = _verified.get(key)
    if cached is not None:
        principal, expires_at = cached
        if time.time() < expires_at:
            _verified.move_to_end(key)
            return principal
        del _verified[key]  # expired: the full check below answers "token expired"
    principal, expires_at = _verify(token, settings)
    _verified[key] = (principal, expires_at)
    if len(_verified) > _CACHE_SIZE:
        _verified.popitem(last=False)
    return principal


def _verify(token: str, settings: Settings) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token,
            _secret(settings),
            algorithms=[ALGORITHM],  # pinned: `alg: none` and other algorithms are refused
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired", headers=_CHALLENGE) from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("invalid token", headers=_CHALLENGE) from exc
    scope = claims.get("scope", "")
    tenant = claims.get("tenant")
    if not isinstance(scope, str) or (
        tenant is not None and not (isinstance(tenant, str) and _TENANT.fullmatch(tenant))
    ):
        raise Unauthorized("invalid token claims", headers=_CHALLENGE)
    scopes = frozenset(scope.split())
    if tenant is None and "admin" not in scopes:
        # Only an admin may go without a tenant: a tenant-less reader would see every tenant's jobs.
        raise Unauthorized("a token without the admin scope must name its tenant", headers=_CHALLENGE)
    # PyJWT refuses a token once `now >= exp`, and `exp` is required, so it is a number here.
    return Principal(subject=str(claims["sub"]), tenant_id=tenant, scopes=scopes), float(int(claims["exp"]))


def mint_token(
    settings: Settings, *, subject: str, tenant_id: str | None, scopes: list[str], ttl_seconds: int = 3600
) -> str:
    """A signed token for `tenant_id` with `scopes`, valid for `ttl_seconds`."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_seconds}
    if tenant_id is not None:
        claims["tenant"] = tenant_id
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, _secret(settings), algorithm=ALGORITHM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.tokens", description="Mint a bearer token.")
    parser.add_argument("--tenant", default=None, help="tenant id (omit for a tenant-less admin token)")
    parser.add_argument("--subject", default="cli")
    parser.add_argument("--scope", default="jobs:write jobs:read", help="space-separated scopes")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    unknown = set(args.scope.split()) - set(SCOPES)
    if unknown:
        parser.error(f"unknown scopes: {', '.join(sorted(unknown))}")
    if args.tenant is None and "admin" not in args.scope.split():
        parser.error("--tenant is required unless the scopes include admin")
    settings = load_settings()
    print(
        mint_token(
            settings, subject=args.subject, tenant_id=args.tenant, scopes=args.scope.split(), ttl_seconds=args.ttl
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
