"""GET /webhooks/secret: the caller tenant's webhook signing secret, to verify deliveries with.

Scope `jobs:write`: whoever may create webhook jobs can already have any body signed with the
tenant's secret (by delivering it to a URL of their own), so handing them the secret gives
nothing new, while a read-only token (a dashboard, a browser) cannot forge deliveries with it.
An admin token acts for the tenant named by `tenantId` (or its own), as for writes.
"""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from shared.errors import ServiceUnavailable
from shared.schemas.common import CamelModel
from shared.settings import Settings
from shared.webhook_signing import SigningSecretMissing, tenant_signing_secret

from .auth import acting_tenant, authenticate
from .http import JSONResponse, parse_query, single_params


class SecretQuery(CamelModel):
    tenant_id: str | None = Field(None, min_length=1, max_length=128, description="admins: whose secret")


async def get_webhook_secret(request: Request) -> Response:
    principal = authenticate(request, "jobs:write")
    query = parse_query(SecretQuery, single_params(request))
    tenant = acting_tenant(principal, query.tenant_id)
    settings: Settings = request.app.state.settings
    try:
        secret = tenant_signing_secret(settings, tenant)
    except SigningSecretMissing:
        raise ServiceUnavailable("webhook signing is not configured (WEBHOOK_SIGNING_SECRET)") from None
    body = {"tenantId": tenant, "secret": secret, "scheme": "standard-webhooks-v1"}
    # A secret must not linger in caches.
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
