"""Batches end to end: jobs of several queues posted together, counted per state, and one
callback when every job is final — also when some fail, are retried and are retried again."""

from __future__ import annotations

import pytest

from shared.schemas.webhooks import WebhookRequest
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until
from tests.support.smtp import running_smtp_server

CALLBACK = "https://callbacks.example.com/batches"


@pytest.fixture
def smtp():
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def app(database_url, s3, smtp, tmp_path):
    from functions.registry import seed_queues
    from shared.storage import Storage

    settings = make_settings(
        database_url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
        **smtp.settings_overrides(),
    )
    seed_queues(database_url, settings)
    Storage(settings).ensure_bucket()
    with live_app(settings) as live:
        # Callbacks stay queued where the test can read them (no https receiver on loopback).
        with live.admin() as admin:
            assert admin.post("/admin/queues/webhooks/pause").status_code == 200
        yield live


def _callbacks(app: LiveApp, batch_id: str) -> list[tuple]:
    return app.sql(
        "SELECT args FROM jobs WHERE queue = 'webhooks' AND meta->>'callbackForBatch' = %s ORDER BY id", (batch_id,)
    )


def _finished(app: LiveApp, batch_id: str) -> dict:
    def view() -> dict:
        with app.client() as client:
            body: dict = client.get(f"/batches/{batch_id}").json()
        return body if body["finished"] else {}

    return wait_until(f"batch {batch_id} finished", view, timeout=120)


def test_a_batch_of_100_calls_back_once_with_the_counts_also_after_failures_and_retries(app: LiveApp):
    items: list[dict] = [{"queue": "default", "function": "echo", "args": {"n": i}} for i in range(88)]
    items += [{"queue": "default", "function": "flaky", "args": {"succeed_on": 2}} for _ in range(6)]
    items += [{"queue": "default", "function": "permanent_fail", "args": {}} for _ in range(3)]
    items += [{"queue": "default", "function": "always_fail", "args": {}, "options": {"maxAttempts": 2}}] * 2
    items.append({"queue": "emails", "to": "ada@example.com", "subject": "In a batch", "text": "hello"})
    assert len(items) == 100
    with app.client() as client:
        response = client.post("/jobs/batch", json={"jobs": items, "callbackUrl": CALLBACK})
    assert response.status_code == 201, response.text
    created = response.json()
    batch_id = created["batchId"]
    assert created["count"] == 100 and len(set(created["jobIds"])) == 100

    batch = _finished(app, batch_id)
    expected = {"completed": 95, "discarded": 5, "cancelled": 0}
    assert {state: batch["counts"][state] for state in expected} == expected
    assert batch["total"] == batch["done"] == 100 and batch["progress"] == 1.0
    [(callback,)] = _callbacks(app, batch_id)
    assert WebhookRequest.model_validate(callback).function_args() == callback  # what the webhooks handler takes
    assert callback["url"] == CALLBACK and callback["event"] == "batch.finished"
    assert callback["payload"] == {"batchId": batch_id, "tenantId": "tenant-1", "total": 100, "counts": expected}
    # The flaky jobs really failed first and were retried by the engine.
    flaky = app.sql("SELECT attempt FROM jobs WHERE batch_id = %s AND worker = 'flaky'", (batch_id,))
    assert flaky == [(2,)] * 6

    # A discarded job retried by hand runs again and is counted again; the batch called back once.
    [(discarded_id,)] = app.sql(
        "SELECT id FROM jobs WHERE batch_id = %s AND worker = 'permanent_fail' ORDER BY id LIMIT 1", (batch_id,)
    )
    with app.client() as client:
        assert client.post(f"/jobs/{discarded_id}/retry").status_code == 200
    app.wait_for_job(discarded_id, {"discarded"})
    with app.client() as client:
        again = client.get(f"/batches/{batch_id}").json()
    assert again["counts"]["discarded"] == 5 and again["done"] == 100
    assert len(_callbacks(app, batch_id)) == 1


def test_cancelling_a_batch_finishes_it_with_cancelled_counts(app: LiveApp):
    items = [{"queue": "default", "function": "echo", "args": {}, "options": {"scheduleIn": 3600}}] * 4
    with app.client() as client:
        created = client.post("/jobs/batch", json={"jobs": items, "callbackUrl": CALLBACK}).json()
        running = client.get(f"/batches/{created['batchId']}").json()
        assert running["counts"]["scheduled"] == 4 and running["progress"] == 0 and not running["finished"]
        assert client.request("DELETE", "/jobs", params={"batchId": created["batchId"]}).json() == {"cancelled": 4}
    batch = _finished(app, created["batchId"])
    assert batch["counts"]["cancelled"] == 4
    [(callback,)] = _callbacks(app, created["batchId"])
    assert callback["payload"]["counts"] == {"completed": 0, "discarded": 0, "cancelled": 4}


# 5 recipients go in by INSERT, 24 by COPY (job_store.COPY_THRESHOLD).
@pytest.mark.parametrize("recipients", [5, 24])
def test_bulk_email_is_a_batch_with_progress_and_one_callback(app: LiveApp, smtp, recipients: int):
    body = {
        "subject": "Hi {{ name }}",
        "text": "Hello {{ name }}",
        "recipients": [{"to": f"user{i}@example.com", "data": {"name": f"User {i}"}} for i in range(recipients)],
        "callbackUrl": CALLBACK,
    }
    with app.client() as client:
        created = client.post("/jobs/emails/bulk", json=body).json()
    # Every id answered, in the recipients' order.
    to = dict(app.sql("SELECT id, args->>'to' FROM jobs WHERE batch_id = %s", (created["batchId"],)))
    assert [to[i] for i in created["jobIds"]] == [f"user{i}@example.com" for i in range(recipients)]
    batch = _finished(app, created["batchId"])
    assert batch["counts"]["completed"] == recipients and batch["progress"] == 1.0
    assert len(smtp.messages) == recipients
    [(callback,)] = _callbacks(app, created["batchId"])
    assert callback["payload"]["counts"] == {"completed": recipients, "discarded": 0, "cancelled": 0}


def test_an_invalid_item_is_a_422_naming_it_and_nothing_is_created(app: LiveApp):
    items = [
        {"queue": "default", "function": "echo", "args": {}},
        {"queue": "emails", "to": "not an address", "subject": "x", "text": "y"},
    ]
    with app.client() as client:
        response = client.post("/jobs/batch", json={"jobs": items})
        unknown = client.post("/jobs/batch", json={"jobs": [{"queue": "nope"}]})
        unique = client.post(
            "/jobs/batch", json={"jobs": [{"queue": "default", "function": "echo", "options": {"unique": {}}}]}
        )
        http_callback = client.post(
            "/jobs/batch", json={"jobs": items[:1], "callbackUrl": "http://callbacks.example.com/x"}
        )
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["path"].startswith("jobs.1.to")
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["path"] == "jobs.0.queue"
    assert unique.status_code == 422 and unique.json()["errors"][0]["path"] == "jobs.0.options.unique"
    assert http_callback.status_code == 422
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
    assert app.sql("SELECT count(*) FROM batches") == [(0,)]


def test_another_tenants_batch_is_a_404(app: LiveApp):
    with app.client() as client:
        created = client.post("/jobs/batch", json={"jobs": [{"queue": "default", "function": "echo"}]}).json()
    with app.client("tenant-2") as other:
        assert other.get(f"/batches/{created['batchId']}").status_code == 404
    with app.client() as client:
        assert client.get("/batches/no-such-batch").status_code == 404


def test_concurrent_last_completions_call_back_exactly_once(app: LiveApp):
    import concurrent.futures

    import psycopg

    with app.admin() as admin:
        assert admin.post("/admin/queues/default/pause").status_code == 200
    items = [{"queue": "default", "function": "echo", "args": {"n": i}} for i in range(32)]
    with app.client() as client:
        created = client.post("/jobs/batch", json={"jobs": items, "callbackUrl": CALLBACK}).json()

    def complete(job_id: int) -> None:
        # The machine's two statements (claim, then complete), each job on a connection of its own.
        with psycopg.connect(app.settings.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm', attempted_at = now() "
                "WHERE id = %s",
                (job_id,),
            )
            conn.execute("UPDATE jobs SET state = 'completed', completed_at = now() WHERE id = %s", (job_id,))

    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        list(pool.map(complete, created["jobIds"]))
    [(callback,)] = _callbacks(app, created["batchId"])
    assert callback["payload"]["counts"] == {"completed": 32, "discarded": 0, "cancelled": 0}


async def test_the_batch_callback_is_delivered_signed_with_the_counts(app: LiveApp):
    from standardwebhooks import Webhook

    from functions.handlers import webhooks
    from functions.handlers.base import HandlerContext
    from shared.outbound import RESOURCE_KEY
    from shared.webhook_signing import tenant_signing_secret
    from tests.functions.handlers.test_webhooks import make_job
    from tests.support.receivers import http_receiver

    with app.client() as client:
        created = client.post(
            "/jobs/batch", json={"jobs": [{"queue": "default", "function": "echo"}], "callbackUrl": CALLBACK}
        ).json()
    _finished(app, created["batchId"])
    [(args,)] = _callbacks(app, created["batchId"])
    machine_settings = make_settings(app.settings.database_url, outbound_allowlist=["127.0.0.1"])
    ctx = HandlerContext(settings=machine_settings, machine_id="test-machine")
    try:
        with http_receiver([(200, {}, 0.0)]) as receiver:
            # Callbacks go to https URLs only; the loopback receiver here speaks plain http.
            job = make_job({**args, "url": f"{receiver.url}/batches"}, job_id=1, tenant_id="tenant-1")
            await webhooks.run(job, ctx.for_job(job))
    finally:
        await ctx.resources[RESOURCE_KEY].aclose()
    [received] = receiver.requests
    body = Webhook(tenant_signing_secret(machine_settings, "tenant-1")).verify(received.body, received.headers)
    assert body["type"] == "batch.finished"
    assert body["data"] == {
        "batchId": created["batchId"],
        "tenantId": "tenant-1",
        "total": 1,
        "counts": {"completed": 1, "discarded": 0, "cancelled": 0},
    }
