"""Completion callbacks: the webhooks job args built for a finished job, and their delivery."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from functions.handlers import webhooks
from functions.handlers.base import HandlerContext
from shared.callbacks import callback_job_args
from shared.db.models import Job, JobState
from shared.outbound import RESOURCE_KEY
from shared.schemas.webhooks import WebhookRequest
from shared.webhook_signing import tenant_signing_secret
from tests.conftest import make_settings
from tests.functions.handlers.test_webhooks import make_job
from tests.support.receivers import http_receiver

UNUSED_DB = "postgresql://127.0.0.1:9/unused"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def finished(state: JobState, **changes) -> Job:
    job = dataclasses.replace(
        make_job({"imageId": "x"}, job_id=123, tenant_id="tenant-1"),
        queue="images",
        worker="ProcessImage",
        state=state,
        attempt=2,
        meta={"requestId": "r-1", "callbackUrl": "https://client.example.com/done"},
        result={"outputs": [{"name": "thumb", "key": "tenants/tenant-1/jobs/123/thumb.webp", "size": 10}], "width": 80},
        errors=[{"attempt": 1, "at": "2025-06-01T11:59:00Z", "kind": "timeout", "error": "slow"}],
    )
    return dataclasses.replace(job, **changes)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (JobState.COMPLETED, "job.completed"),
        (JobState.DISCARDED, "job.discarded"),
        (JobState.CANCELLED, "job.cancelled"),
    ],
)
def test_final_states_produce_a_webhook_for_the_callback_url(state, event):
    args = callback_job_args(finished(state))
    assert args is not None
    assert WebhookRequest.model_validate(args).function_args() == args  # what the webhooks handler accepts
    assert (args["url"], args["event"], args["method"]) == ("https://client.example.com/done", event, "POST")
    assert args["payload"] == {
        "id": 123,
        "queue": "images",
        "worker": "ProcessImage",
        "state": state.value,
        "tenantId": "tenant-1",
        "attempt": 2,
        "outputKeys": ["tenants/tenant-1/jobs/123/thumb.webp"],
        "error": {"attempt": 1, "at": "2025-06-01T11:59:00Z", "kind": "timeout", "error": "slow"},
    }


@pytest.mark.parametrize("state", [JobState.EXECUTING, JobState.RETRYABLE, JobState.AVAILABLE, JobState.SCHEDULED])
def test_non_final_states_produce_nothing(state):
    assert callback_job_args(finished(state)) is None


def test_no_callback_url_produces_nothing():
    assert callback_job_args(finished(JobState.COMPLETED, meta={"requestId": "r-1"})) is None


def test_payload_stays_small_whatever_the_error_holds():
    job = finished(
        JobState.DISCARDED, result=None, errors=[{"attempt": 2, "at": NOW, "kind": "permanent", "error": "e" * 100_000}]
    )
    args = callback_job_args(job)
    assert args is not None
    assert args["payload"]["outputKeys"] == []
    assert args["payload"]["error"]["at"] == NOW.isoformat()
    assert len(args["payload"]["error"]["error"]) <= 2001


async def test_callback_args_are_delivered_signed_by_the_webhooks_handler():
    settings = make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1"])
    ctx = HandlerContext(settings=settings, machine_id="test-machine")
    try:
        with http_receiver([(200, {}, 0.0)]) as receiver:
            job = finished(JobState.COMPLETED, meta={"callbackUrl": f"{receiver.url}/done"})
            args = callback_job_args(job)
            assert args is not None
            result = await webhooks.run(make_job(args, job_id=124, tenant_id=job.tenant_id), ctx)
    finally:
        await ctx.resources[RESOURCE_KEY].aclose()
    [received] = receiver.requests
    body = Webhook(tenant_signing_secret(settings, "tenant-1")).verify(received.body, received.headers)
    assert body["type"] == "job.completed"
    assert body["data"]["id"] == 123 and body["data"]["state"] == "completed"
    assert result["statusCode"] == 200
