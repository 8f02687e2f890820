"""Per-tenant Standard Webhooks secrets and signature headers."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.errors import RetryableJobError
from shared.webhook_signing import (
    SigningSecretMissing,
    signature_headers,
    tenant_signing_secret,
    webhook_id,
)
from tests.conftest import make_settings

UNUSED_DB = "postgresql://127.0.0.1:9/unused"
SETTINGS = make_settings(UNUSED_DB)


def test_each_tenant_has_its_own_stable_secret():
    a1, a2 = tenant_signing_secret(SETTINGS, "tenant-a"), tenant_signing_secret(SETTINGS, "tenant-a")
    b = tenant_signing_secret(SETTINGS, "tenant-b")
    assert a1 == a2 != b
    assert a1.startswith("whsec_") and len(base64.b64decode(a1.removeprefix("whsec_"))) == 32
    assert SETTINGS.webhook_signing_secret is not None
    master = SETTINGS.webhook_signing_secret.get_secret_value()
    assert a1 != master and master.removeprefix("whsec_") not in a1


def test_secrets_follow_the_master_key():
    other = make_settings(UNUSED_DB, webhook_signing_secret="whsec_" + base64.b64encode(b"k" * 32).decode())
    assert tenant_signing_secret(other, "tenant-a") != tenant_signing_secret(SETTINGS, "tenant-a")


def test_missing_master_key_is_a_retryable_configuration_error():
    with pytest.raises(SigningSecretMissing) as raised:
        tenant_signing_secret(make_settings(UNUSED_DB, webhook_signing_secret=None), "tenant-a")
    assert isinstance(raised.value, RetryableJobError) and raised.value.kind == "configuration"


def test_headers_verify_with_the_reference_library():
    secret = tenant_signing_secret(SETTINGS, "tenant-a")
    body = '{"type":"e","data":{"é":1}}'
    headers = signature_headers(secret, msg_id=webhook_id(9), body=body, timestamp=int(time.time()))
    assert headers["webhook-id"] == "msg_9"
    assert Webhook(secret).verify(body.encode(), headers) == {"type": "e", "data": {"é": 1}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("1", "2").encode(), headers)  # tampered body
    with pytest.raises(WebhookVerificationError):
        Webhook(tenant_signing_secret(SETTINGS, "tenant-b")).verify(body.encode(), headers)
