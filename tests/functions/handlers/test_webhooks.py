"""The webhooks handler, called directly, against real receivers on loopback."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from functions.handlers import webhooks
from functions.handlers.base import HandlerContext
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError
from shared.outbound import RESOURCE_KEY, DestinationNotAllowed, OutboundClient
from shared.schemas.webhooks import WebhookRequest
from shared.webhook_signing import tenant_signing_secret
from tests.conftest import make_settings
from tests.support.bombs import CODINGS, MiB, bomb, traced_peak
from tests.support.jobs import held_job, run_handler
from tests.support.receivers import Reply, http_receiver

UNUSED_DB = "postgresql://127.0.0.1:9/unused"  # handlers never touch the database
SETTINGS = make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1"])
INSERTED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_job(args: dict[str, Any], *, attempt: int = 1, job_id: int = 42, tenant_id: str = "tenant-1") -> Job:
    return held_job(
        queue="webhooks", tenant_id=tenant_id, args=args, job_id=job_id, attempt=attempt, inserted_at=INSERTED_AT
    )


def submitted(body: dict[str, Any], settings=SETTINGS) -> dict[str, Any]:
    """What the ingress stores as job.args for this POST body."""
    return WebhookRequest.model_validate_json(json.dumps(body), context={"settings": settings}).function_args()


@pytest.fixture
async def ctx():
    context = HandlerContext(settings=SETTINGS, machine_id="test-machine")
    yield context
    client = context.resources.get(RESOURCE_KEY)
    if isinstance(client, OutboundClient):
        await client.aclose()


def verify(received, tenant_id: str = "tenant-1"):
    return Webhook(tenant_signing_secret(SETTINGS, tenant_id)).verify(received.body, received.headers)


async def test_delivery_is_signed_with_the_tenant_secret_and_reports_facts(ctx):
    payload = {"invoice": "inv_1", "amount": 12.5, "tags": ["a", None], "nested": {"ok": True, "none": None}}
    with http_receiver([(200, {}, 0.0)]) as receiver:
        args = submitted(
            {
                "url": f"{receiver.url}/hooks",
                "event": "invoice.paid",
                "payload": payload,
                "headers": {"Authorization": "Bearer abc", "X-Trace": "t-1"},
            }
        )
        result = await run_handler(webhooks, make_job(args), ctx)
    [received] = receiver.requests
    assert (received.method, received.path) == ("POST", "/hooks")
    assert received.headers["content-type"] == "application/json"
    assert (received.headers["authorization"], received.headers["x-trace"]) == ("Bearer abc", "t-1")
    assert received.headers["webhook-id"] == "msg_42"
    assert received.headers["webhook-signature"].startswith("v1,")
    assert verify(received) == {"type": "invoice.paid", "timestamp": "2025-01-02T03:04:05Z", "data": payload}
    with pytest.raises(WebhookVerificationError):
        verify(received, tenant_id="tenant-2")  # another tenant's secret does not verify it
    assert result["statusCode"] == 200
    assert isinstance(result["latencyMs"], int) and result["latencyMs"] >= 0
    assert (result["attempts"], result["webhookId"], result["event"]) == (1, "msg_42", "invoice.paid")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_method_is_honoured(ctx, method):
    with http_receiver([(204, {}, 0.0)]) as receiver:
        args = submitted({"url": receiver.url, "event": "e", "payload": [1, 2], "method": method})
        result = await run_handler(webhooks, make_job(args), ctx)
    assert [r.method for r in receiver.requests] == [method]
    assert result["statusCode"] == 204
    verify(receiver.requests[0])


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("status", [200, 503])
async def test_a_compressed_bomb_in_the_answer_is_read_within_bounds(ctx, coding, status):
    # The answer's body is not used, but reading it must not inflate a bomb: the outcome is the
    # status alone, and memory stays far below what the body decodes to (256 MiB).
    answer = Reply(status, {"content-encoding": coding}, body=bomb(coding))
    with http_receiver([answer]) as receiver, traced_peak() as peak:
        job = make_job(submitted({"url": receiver.url, "event": "e"}))
        if status == 200:
            assert (await webhooks.run(job, ctx))["statusCode"] == 200
        else:
            with pytest.raises(RetryableJobError) as raised:
                await webhooks.run(job, ctx)
            assert raised.value.kind == "http-503"
    assert peak.bytes < 16 * MiB


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_and_408_are_retryable(ctx, status):
    with http_receiver([(status, {}, 0.0)]) as receiver:
        with pytest.raises(RetryableJobError) as raised:
            await run_handler(webhooks, make_job(submitted({"url": receiver.url, "event": "e"})), ctx)
    assert raised.value.kind == f"http-{status}"
    assert raised.value.retry_after_seconds is None
    assert f"attempt 1: HTTP {status} after " in str(raised.value) and " ms" in str(raised.value)


async def test_429_retry_after_sets_the_delay(ctx):
    with http_receiver([(429, {"Retry-After": "7"}, 0.0)]) as receiver:
        with pytest.raises(RetryableJobError) as raised:
            await run_handler(webhooks, make_job(submitted({"url": receiver.url, "event": "e"})), ctx)
    assert (raised.value.kind, raised.value.retry_after_seconds) == ("http-429", 7)


async def test_503_retry_after_as_http_date_is_honoured(ctx):
    when = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    with http_receiver([(503, {"Retry-After": when}, 0.0)]) as receiver:
        with pytest.raises(RetryableJobError) as raised:
            await run_handler(webhooks, make_job(submitted({"url": receiver.url, "event": "e"})), ctx)
    assert raised.value.retry_after_seconds is not None
    assert 3000 < raised.value.retry_after_seconds <= 3600


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_other_client_errors_are_permanent(ctx, status):
    with http_receiver([(status, {}, 0.0)]) as receiver:
        with pytest.raises(PermanentJobError) as raised:
            await run_handler(webhooks, make_job(submitted({"url": receiver.url, "event": "e"})), ctx)
    assert raised.value.kind == f"http-{status}"
    assert f"HTTP {status}" in str(raised.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_permanent_and_not_followed(ctx, status):
    with http_receiver([(200, {}, 0.0)]) as elsewhere:
        with http_receiver([(status, {"Location": f"{elsewhere.url}/moved"}, 0.0)]) as receiver:
            with pytest.raises(PermanentJobError) as raised:
                await run_handler(webhooks, make_job(submitted({"url": receiver.url, "event": "e"})), ctx)
    assert raised.value.kind == f"http-{status}"
    assert len(receiver.requests) == 1
    assert elsewhere.requests == []


async def test_slow_receiver_times_out_as_retryable(ctx):
    with http_receiver([(200, {}, 30.0)]) as receiver:
        with pytest.raises(RetryableJobError) as raised:
            await run_handler(
                webhooks, make_job(submitted({"url": receiver.url, "event": "e", "timeoutSeconds": 1})), ctx
            )
    assert raised.value.kind == "timeout"
    assert "no answer within 1 s" in str(raised.value)


async def test_unreachable_receiver_is_a_retryable_network_error(ctx):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(RetryableJobError) as raised:
        await run_handler(webhooks, make_job(submitted({"url": f"http://127.0.0.1:{closed_port}/", "event": "e"})), ctx)
    assert raised.value.kind == "network"


async def test_attempts_of_one_job_share_webhook_id_and_body(ctx):
    with http_receiver([(500, {}, 0.0), (200, {}, 0.0)]) as receiver:
        args = submitted({"url": receiver.url, "event": "order.created", "payload": {"n": 1}})
        with pytest.raises(RetryableJobError):
            await run_handler(webhooks, make_job(args, attempt=1, job_id=7), ctx)
        result = await run_handler(webhooks, make_job(args, attempt=2, job_id=7), ctx)
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_7"
    assert first.body == second.body
    verify(first)
    verify(second)
    assert (result["attempts"], result["webhookId"]) == (2, "msg_7")


async def test_other_jobs_get_other_webhook_ids(ctx):
    with http_receiver([(200, {}, 0.0)]) as receiver:
        args = submitted({"url": receiver.url, "event": "e"})
        await run_handler(webhooks, make_job(args, job_id=1), ctx)
        await run_handler(webhooks, make_job(args, job_id=2), ctx)
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["msg_1", "msg_2"]


async def test_destination_refused_at_run_time_is_permanent():
    # Accepted while loopback was allowlisted; the machine now runs without that opt-out.
    with http_receiver([(200, {}, 0.0)]) as receiver:
        args = submitted({"url": receiver.url, "event": "e"})
        strict = HandlerContext(settings=make_settings(UNUSED_DB), machine_id="test-machine")
        with pytest.raises(DestinationNotAllowed) as raised:
            await run_handler(webhooks, make_job(args), strict)
    assert raised.value.kind == "destination-not-allowed"
    assert receiver.requests == []


async def test_invalid_args_are_permanent(ctx):
    with pytest.raises(PermanentJobError) as raised:
        await run_handler(webhooks, make_job({"url": "https://example.com/", "event": "e", "method": "GET"}), ctx)
    assert raised.value.kind == "invalid-args"


def test_backoff_follows_the_standard_webhooks_schedule_with_jitter():
    for attempt, base in enumerate(webhooks.SCHEDULE_SECONDS, start=1):
        delay = webhooks.backoff(attempt)
        assert base * 0.9 <= delay <= base * 1.1
    assert 86_400 * 0.9 <= webhooks.backoff(50) <= 86_400 * 1.1
    assert list(webhooks.SCHEDULE_SECONDS) == sorted(webhooks.SCHEDULE_SECONDS)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        (" 120 ", 120.0),
        ("999999999", 86_400.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_parsing(header, expected):
    assert webhooks.retry_after_seconds(header) == expected


def test_retry_after_http_date():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert webhooks.retry_after_seconds("Tue, 01 Jan 2030 00:01:30 GMT", now=now) == 90.0
