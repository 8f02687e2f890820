"""POST /uploads: a presigned PUT into the tenant's upload prefix."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shared.settings import Settings

from .auth import acting_tenant, authenticate
from .http import JSONResponse, parse_model, read_json_body
from .presenters import rfc3339


async def create_upload(request: Request) -> Response:
    from shared.keys import upload_key
    from shared.schemas.uploads import UploadRequest

    settings: Settings = request.app.state.settings
    principal = authenticate(request, "jobs:write")
    body = parse_model(UploadRequest, await read_json_body(request, max_bytes=settings.max_body_bytes))
    tenant_id = acting_tenant(principal, body.tenant_id)
    key = upload_key(tenant_id, body.filename)
    url, expires_at = (
        request.app.state.storage().for_tenant(tenant_id).presign_put(key, body.content_type, size=body.size)
    )
    return JSONResponse(
        {
            "key": key,
            "url": url,
            "method": "PUT",
            # The signature covers both: the client's PUT must send exactly these.
            "headers": {"Content-Type": body.content_type, "Content-Length": str(body.size)},
            "expiresAt": rfc3339(expires_at),
        },
        status_code=201,
    )
