"""`POST /uploads`: ask for a presigned PUT URL, then send the file straight to storage.

The ingress validates an `UploadRequest`, picks the key with `upload_key`, signs it with
`Storage.presign_put(key, contentType, size=size)` and answers an `UploadResponse` whose
`headers` the client must send with its PUT.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field

from shared.keys import upload_key
from shared.schemas.common import CamelModel, TenantId

__all__ = ["MAX_UPLOAD_BYTES", "UploadRequest", "UploadResponse", "upload_key"]

MAX_UPLOAD_BYTES: Final = 100 * 1024 * 1024

# Letters, digits, `.`, `_`, `-`; the first character is not a dot, so no `.`, `..` or hidden names.
SafeFilename = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")]

# RFC 6838 type/subtype names, no parameters.
_MEDIA_TYPE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"

# Served back through presigned GET URLs with this content type, these would run script in a
# browser on the storage origin, so uploads may not claim them.
_ACTIVE_CONTENT_TYPES: Final = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/javascript",
        "application/javascript",
        "application/ecmascript",
        "text/xml",
        "application/xml",
    }
)


def _passive_media_type(value: str) -> str:
    value = value.lower()
    if value in _ACTIVE_CONTENT_TYPES:
        raise ValueError(f"{value} may run script in a browser and cannot be uploaded")
    return value


MediaType = Annotated[str, Field(pattern=_MEDIA_TYPE_PATTERN), AfterValidator(_passive_media_type)]


class UploadRequest(CamelModel):
    """A file the client is about to upload."""

    tenant_id: TenantId | None = None
    filename: SafeFilename
    content_type: MediaType = Field(description="type/subtype, e.g. image/jpeg; stored lower-case")
    size: int = Field(ge=1, le=MAX_UPLOAD_BYTES, description="exact size in bytes of the body the client will PUT")


class UploadResponse(CamelModel):
    """Where and how to PUT the file; `key` is what a job's `sourceKey` then names."""

    key: str
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: datetime
