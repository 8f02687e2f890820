"""GET /webhooks/secret: each tenant gets its own signing secret, and the README's verification
snippet accepts exactly what the webhooks function signs with it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from shared.webhook_signing import signature_headers, tenant_signing_secret
from tests.functions.ingress.conftest import assert_problem
from tests.support.live import LiveApp

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_a_tenant_gets_its_own_secret(app: LiveApp) -> None:
    with app.client("tenant-a", "jobs:write") as client:
        response = client.get("/webhooks/secret")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body == {
        "tenantId": "tenant-a",
        "secret": tenant_signing_secret(app.settings, "tenant-a"),
        "scheme": "standard-webhooks-v1",
    }
    with app.client("tenant-b", "jobs:write") as client:
        assert client.get("/webhooks/secret").json()["secret"] != body["secret"]


def test_only_admins_name_another_tenant_and_read_only_tokens_get_nothing(app: LiveApp) -> None:
    with app.client("tenant-a", "jobs:write") as client:
        assert_problem(client.get("/webhooks/secret?tenantId=tenant-b"), 403)
    with app.client("tenant-a", "jobs:read") as client:
        assert_problem(client.get("/webhooks/secret"), 403)
    with app.client(None, "admin") as client:
        assert_problem(client.get("/webhooks/secret"), 422)  # an admin without a tenant must name one
        assert_problem(client.get("/webhooks/secret?tenantId="), 422)
        answer = client.get("/webhooks/secret?tenantId=tenant-b").json()
    assert answer["secret"] == tenant_signing_secret(app.settings, "tenant-b")


def readme_verifier() -> Any:
    """The `verify` function of the README's verification snippet."""
    section = README.split("### Verifying webhook signatures", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 - the README's own example, run as a reader would
    return namespace["verify"]


def test_the_readme_snippet_verifies_what_the_webhooks_function_signs(app: LiveApp) -> None:
    verify = readme_verifier()
    with app.client("tenant-a", "jobs:write") as client:
        secret = client.get("/webhooks/secret").json()["secret"]
    body = '{"type":"order.paid","timestamp":"2026-01-01T00:00:00Z","data":{"order":42}}'
    now = int(time.time())
    signing = tenant_signing_secret(app.settings, "tenant-a")  # what functions/handlers/webhooks.py signs with
    headers = signature_headers(signing, msg_id="msg_7", body=body, timestamp=now)
    assert verify(secret, headers, body.encode())
    assert not verify(secret, headers, body.replace("42", "43").encode())
    other = tenant_signing_secret(app.settings, "tenant-b")
    assert not verify(other, headers, body.encode())
    stale = signature_headers(secret, msg_id="msg_7", body=body, timestamp=now - 3600)
    assert not verify(secret, stale, body.encode())
