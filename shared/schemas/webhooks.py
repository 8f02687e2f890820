"""`POST /jobs/webhooks`: one signed HTTP delivery to a tenant's endpoint.

The URL passes the outbound rules when the validation context carries settings (the ingress does
that), so a refused destination is a 422 at submit; in production it must also be https. Extra
headers may not touch what the service owns: framing and hop-by-hop headers, the content type of
the JSON body, and the Standard Webhooks signature headers.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Final, Literal

import httpx
from pydantic import AfterValidator, Field, JsonValue, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from shared.outbound_policy import DestinationNotAllowed, check_url, requested_url
from shared.schemas.common import JobRequest
from shared.settings import Settings

MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_HEADERS: Final = 32
MAX_HEADER_BYTES: Final = 8 * 1024
DEFAULT_TIMEOUT_SECONDS: Final = 15.0  # Standard Webhooks recommends 15-30 s for receivers

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\uffff]{0,2048}$")  # no CR, LF, NUL or other controls
_EVENT = re.compile(r"^[\x21-\x7e]{1,128}$")
_RESERVED_HEADERS: Final = frozenset(
    {
        # hop-by-hop (RFC 9110 7.6.1) and connection framing: ours to set, not the tenant's
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
        # the body is the JSON we sign; its type and encoding are fixed
        "content-type",
        "content-encoding",
    }
)


def check_webhook_destination(url: str, settings: Settings) -> None:
    """The outbound rules, plus https-only in production. Raises DestinationNotAllowed."""
    check_url(url, settings)
    if settings.environment == "production" and not url.lower().startswith("https://"):
        raise DestinationNotAllowed("plain http (webhooks need https in production)")


def _webhook_destination(url: str, info: ValidationInfo) -> str:
    settings = (info.context or {}).get("settings")
    if isinstance(settings, Settings):
        try:
            check_webhook_destination(url, settings)
        except DestinationNotAllowed as exc:
            raise PydanticCustomError("destination_not_allowed", "{reason}", {"reason": str(exc)}) from None
    # Kept as the client will request it: a rate limit by host reads the stored URL.
    try:
        return requested_url(url)
    except httpx.InvalidURL:
        raise PydanticCustomError("invalid_url", "not a valid URL") from None


def encoded_json(value: JsonValue) -> str:
    """The compact JSON text sent (and signed) for `value`. Raises ValueError for NaN or infinity."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class WebhookRequest(JobRequest):
    """Deliver `payload` for `event` to `url`, signed with the tenant's Standard Webhooks secret."""

    url: Annotated[
        str,
        Field(min_length=1, max_length=2048, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://"),
        AfterValidator(_webhook_destination),
    ]
    event: str = Field(pattern=_EVENT.pattern, description="event type, e.g. invoice.paid")
    payload: JsonValue = Field(None, description="any JSON, at most 256 KiB serialized")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_HEADERS, description="extra request headers")
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, ge=1, le=30)

    @field_validator("payload")
    @classmethod
    def _small_payload(cls, value: JsonValue) -> JsonValue:
        if len(encoded_json(value).encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"must be at most {MAX_PAYLOAD_BYTES // 1024} KiB as JSON")
        return value

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, header_value in value.items():
            lower = name.lower()
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if not _HEADER_VALUE.fullmatch(header_value):
                raise ValueError(f"{name}: values are at most 2048 characters, without CR, LF or controls")
            if lower in _RESERVED_HEADERS or lower.startswith("webhook-"):
                raise ValueError(f"{name} is set by the service and cannot be given")
            if lower in seen:
                raise ValueError(f"{name} is given twice")
            seen.add(lower)
        if sum(len(name) + len(v) for name, v in value.items()) > MAX_HEADER_BYTES:
            raise ValueError(f"headers must total at most {MAX_HEADER_BYTES // 1024} KiB")
        return value
