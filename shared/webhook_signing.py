"""Standard Webhooks signatures (webhook-id, webhook-timestamp, webhook-signature: v1,<base64>).

Every tenant verifies with its own secret, derived from WEBHOOK_SIGNING_SECRET:

    tenant secret = "whsec_" + base64(HMAC-SHA256(master key, "content-processor/webhooks/v1/tenant:" + tenant id))

Why derived, and why per tenant: a tenant is given its secret so it can verify deliveries, and with
one shared secret any tenant could forge deliveries that another tenant's receiver would accept.
HMAC is one-way, so a tenant's secret reveals neither the master key nor another tenant's secret,
and derivation needs no table of secrets to store, back up or leak: the same master key yields the
same secrets on every machine. Rotating WEBHOOK_SIGNING_SECRET rotates every tenant's secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Final

from standardwebhooks import Webhook

from shared.errors import RetryableJobError
from shared.settings import Settings

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format marker of Standard Webhooks secrets
_DERIVATION_LABEL: Final = b"content-processor/webhooks/v1/tenant:"


class SigningSecretMissing(RetryableJobError):
    """WEBHOOK_SIGNING_SECRET is not configured; deliveries wait (retry) until it is."""

    def __init__(self) -> None:
        super().__init__("WEBHOOK_SIGNING_SECRET is not configured", kind="configuration")


def webhook_id(job_id: int) -> str:
    """The webhook-id of the delivery a job makes: the same on every attempt, so receivers can dedupe."""
    return f"msg_{job_id}"


def _master_key(settings: Settings) -> bytes:
    """The raw bytes of WEBHOOK_SIGNING_SECRET (`whsec_` + base64, or any other text as is)."""
    if settings.webhook_signing_secret is None:
        raise SigningSecretMissing()
    secret = settings.webhook_signing_secret.get_secret_value()
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :] + "==")
        except binascii.Error:
            pass  # not base64 after all: use the text itself as key material
    return secret.encode()


def tenant_signing_secret(settings: Settings, tenant_id: str) -> str:
    """The Standard Webhooks secret (`whsec_...`) of `tenant_id`. Raises SigningSecretMissing."""
    key = hmac.new(_master_key(settings), _DERIVATION_LABEL + tenant_id.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signature_headers(secret: str, *, msg_id: str, body: str, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, sent at unix time `timestamp` (seconds)."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def main() -> None:
    """Print a tenant's secret (operators hand it to the tenant): python -m shared.webhook_signing TENANT."""
    import sys

    from shared.settings import load_settings

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m shared.webhook_signing TENANT_ID")
    print(tenant_signing_secret(load_settings(), sys.argv[1]))


if __name__ == "__main__":
    main()
