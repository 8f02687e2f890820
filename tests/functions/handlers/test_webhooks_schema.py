"""WebhookRequest validation, as the ingress runs it (JSON body, settings in the context)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas.webhooks import MAX_PAYLOAD_BYTES, WebhookRequest
from tests.conftest import make_settings

UNUSED_DB = "postgresql://127.0.0.1:9/unused"
STRICT = make_settings(UNUSED_DB)
VALID = {"url": "https://hooks.example.com/in", "event": "invoice.paid", "payload": {"id": 1}}


def validate(body: dict[str, Any], settings=STRICT) -> WebhookRequest:
    return WebhookRequest.model_validate_json(json.dumps(body), context={"settings": settings})


def error_types(body: dict[str, Any], settings=STRICT) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as raised:
        validate(body, settings)
    return [(".".join(map(str, e["loc"])), e["type"]) for e in raised.value.errors()]


def test_stored_args_are_camel_case_and_keep_the_payload_verbatim():
    payload = {"a": None, "b": [None, 1.5, "x"], "c": {"d": None}}
    args = validate(
        {**VALID, "payload": payload, "timeoutSeconds": 5, "tenantId": "t1", "options": {"priority": 3}}
    ).function_args()
    assert args == {
        "url": VALID["url"],
        "event": "invoice.paid",
        "payload": payload,
        "method": "POST",
        "headers": {},
        "timeoutSeconds": 5.0,
    }
    assert WebhookRequest.model_validate(args).function_args() == args  # the handler's re-validation


def test_payload_may_be_null_or_absent():
    assert validate({**VALID, "payload": None}).payload is None
    assert validate({"url": VALID["url"], "event": "e"}).payload is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "https://example.com:8443/",
        "https://user@example.com/",
        "http://2130706433/",
    ],
)
def test_refused_destinations_are_a_validation_error(url):
    assert error_types({**VALID, "url": url}) == [("url", "destination_not_allowed")]


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com/hook", "", "https://" + "a" * 2050])
def test_url_must_be_http_or_https(url):
    assert [loc for loc, _ in error_types({**VALID, "url": url})] == ["url"]


def test_production_accepts_https_only():
    production = make_settings(UNUSED_DB, environment="production")
    assert error_types({**VALID, "url": "http://hooks.example.com/"}, production) == [
        ("url", "destination_not_allowed")
    ]
    validate(VALID, production)
    validate({**VALID, "url": "http://hooks.example.com/"})  # outside production plain http is allowed


def test_payload_is_limited_to_256_kib_serialized():
    fits = "x" * (MAX_PAYLOAD_BYTES - 2)  # a JSON string adds two quotes
    validate({**VALID, "payload": fits})
    assert [loc for loc, _ in error_types({**VALID, "payload": fits + "x"})] == ["payload"]


@pytest.mark.parametrize("method", ["GET", "DELETE", "post", "HEAD"])
def test_method_is_post_put_or_patch(method):
    assert [loc for loc, _ in error_types({**VALID, "method": method})] == ["method"]


@pytest.mark.parametrize(("timeout", "ok"), [(0, False), (0.5, False), (1, True), (30, True), (31, False)])
def test_timeout_is_between_1_and_30_seconds(timeout, ok):
    body = {**VALID, "timeoutSeconds": timeout}
    if ok:
        assert validate(body).timeout_seconds == timeout
    else:
        assert [loc for loc, _ in error_types(body)] == ["timeoutSeconds"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Connection": "close"},
        {"Transfer-Encoding": "chunked"},
        {"Host": "evil"},
        {"Content-Length": "1"},
        {"Upgrade": "h2c"},
        {"TE": "trailers"},
        {"Keep-Alive": "1"},
        {"Proxy-Authorization": "x"},
        {"Content-Type": "text/plain"},
        {"webhook-id": "msg_x"},
        {"Webhook-Signature": "v1,x"},
        {"WEBHOOK-TIMESTAMP": "1"},
        {"X-Ok": "a\r\nX-Injected: 1"},
        {"X-Ok": "a\nb"},
        {"X-Ok": "a\x00"},
        {"Bad Name": "x"},
        {"": "x"},
        {"X-Long": "v" * 2049},
        {"X-A": "1", "x-a": "2"},
        {f"X-{i}": "v" for i in range(33)},
        {f"X-{i}": "v" * 2000 for i in range(5)},
    ],
)
def test_unsafe_headers_are_refused(headers):
    assert [loc for loc, _ in error_types({**VALID, "headers": headers})] == ["headers"]


def test_ordinary_headers_are_accepted():
    headers = {"Authorization": "Bearer t", "X-Request-Source": "billing", "User-Agent": "billing/1.0"}
    assert validate({**VALID, "headers": headers}).headers == headers


@pytest.mark.parametrize("event", ["", "has space", "a" * 129, "tab\tin"])
def test_event_is_a_short_visible_string(event):
    assert [loc for loc, _ in error_types({**VALID, "event": event})] == ["event"]


def test_unknown_fields_are_refused():
    assert ("secret", "extra_forbidden") in error_types({**VALID, "secret": "x"})
