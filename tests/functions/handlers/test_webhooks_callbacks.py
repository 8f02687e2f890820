"""Completion callbacks: the webhooks job the database enqueues when a job with a callbackUrl
becomes final (migrations/0003), and its delivery by the webhooks handler."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from standardwebhooks import Webhook

from functions.handlers import webhooks
from functions.handlers.base import HandlerContext
from functions.registry import load_registry
from shared.outbound import RESOURCE_KEY
from shared.schemas.webhooks import WebhookRequest
from shared.webhook_signing import tenant_signing_secret
from tests.conftest import make_settings
from tests.functions.handlers.test_webhooks import make_job
from tests.support.receivers import http_receiver

CALLBACK_URL = "https://client.example.com/done"
OUTPUT_KEY = "tenants/tenant-1/jobs/123/0f/thumb.webp"
ERROR = {"attempt": 1, "at": "2025-06-01T11:59:00Z", "kind": "timeout", "error": "slow"}
FINAL_COLUMN = {"completed": "completed_at", "discarded": "discarded_at", "cancelled": "cancelled_at"}


def executing_job(conn: psycopg.Connection[Any], **columns: Any) -> int:
    """An images job held by a machine, with a callback URL, a result and one error."""
    values: dict[str, Any] = {
        "queue": "images",
        "worker": "ProcessImage",
        "state": "executing",
        "tenant_id": "tenant-1",
        "attempt": 2,
        "attempted_by": "m",
        "attempted_at": "now",
        "claim_token": uuid.uuid4(),
        "meta": Jsonb({"requestId": "r-1", "callbackUrl": CALLBACK_URL}),
        "result": Jsonb({"outputs": [{"name": "thumb", "key": OUTPUT_KEY, "size": 10}, "odd"], "width": 80}),
        "errors": Jsonb([ERROR]),
    }
    values.update(columns)
    names = ", ".join(values)
    marks = ", ".join(f"%({name})s" for name in values)
    row = conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks}) RETURNING id", values).fetchone()
    assert row is not None
    return int(row["id"])


def make_final(conn: psycopg.Connection[Any], job_id: int, state: str) -> None:
    extra = f", {FINAL_COLUMN[state]} = now()" if state in FINAL_COLUMN else ""
    conn.execute(f"UPDATE jobs SET state = %s{extra} WHERE id = %s", (state, job_id))


def callbacks(conn: psycopg.Connection[Any], job_id: int) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT * FROM jobs WHERE queue = 'webhooks' AND (meta->>'callbackFor')::bigint = %s", (job_id,)
    ).fetchall()


@pytest.fixture
def db(settings) -> Any:
    with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.mark.parametrize("state", ["completed", "discarded", "cancelled"])
def test_final_states_enqueue_one_webhook_for_the_callback_url(db, state):
    job_id = executing_job(db)
    make_final(db, job_id, state)
    [callback] = callbacks(db, job_id)
    args = callback["args"]
    assert WebhookRequest.model_validate(args).function_args() == args  # what the webhooks handler accepts
    assert (args["url"], args["event"], args["method"]) == (CALLBACK_URL, f"job.{state}", "POST")
    assert args["payload"] == {
        "id": job_id,
        "queue": "images",
        "worker": "ProcessImage",
        "state": state,
        "tenantId": "tenant-1",
        "attempt": 2,
        "outputKeys": [OUTPUT_KEY],
        "error": ERROR,
    }
    webhooks_spec = load_registry()["webhooks"]
    assert (callback["worker"], callback["max_attempts"]) == (webhooks_spec.worker, webhooks_spec.max_attempts)
    assert (callback["tenant_id"], callback["state"]) == ("tenant-1", "available")
    assert callback["meta"] == {"requestId": "r-1", "callbackFor": job_id}


@pytest.mark.parametrize("state", ["retryable", "available", "scheduled"])
def test_non_final_states_enqueue_nothing(db, state):
    job_id = executing_job(db)
    make_final(db, job_id, state)
    assert callbacks(db, job_id) == []


@pytest.mark.parametrize(
    "meta",
    [{"requestId": "r-1"}, {"callbackUrl": ""}, {"callbackUrl": 7}, {"callbackUrl": "http://example.com/x"}],
)
def test_no_usable_callback_url_enqueues_nothing(db, meta):
    job_id = executing_job(db, meta=Jsonb(meta))
    make_final(db, job_id, "completed")
    assert callbacks(db, job_id) == []


def test_payload_stays_small_whatever_the_error_holds(db):
    huge = {**ERROR, "error": "e" * 100_000}
    job_id = executing_job(db, result=None, errors=Jsonb([huge]))
    make_final(db, job_id, "discarded")
    [callback] = callbacks(db, job_id)
    payload = callback["args"]["payload"]
    assert payload["outputKeys"] == []
    assert len(payload["error"]["error"]) == 2001 and payload["error"]["error"].endswith("…")
    assert payload["error"]["at"] == ERROR["at"]


async def test_callback_args_are_delivered_signed_by_the_webhooks_handler(db, settings):
    machine_settings = make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1"])
    ctx = HandlerContext(settings=machine_settings, machine_id="test-machine")
    try:
        with http_receiver([(200, {}, 0.0)]) as receiver:
            job_id = executing_job(db)
            make_final(db, job_id, "completed")
            [callback] = callbacks(db, job_id)
            # Callbacks go to https URLs only; the loopback receiver here speaks plain http.
            job = make_job({**callback["args"], "url": f"{receiver.url}/done"}, job_id=124, tenant_id="tenant-1")
            result = await webhooks.run(job, ctx.for_job(job))
    finally:
        await ctx.resources[RESOURCE_KEY].aclose()
    [received] = receiver.requests
    body = Webhook(tenant_signing_secret(machine_settings, "tenant-1")).verify(received.body, received.headers)
    assert body["type"] == "job.completed"
    assert body["data"]["id"] == job_id and body["data"]["state"] == "completed"
    assert result["statusCode"] == 200


UNUSED_DB = "postgresql://127.0.0.1:9/unused"
