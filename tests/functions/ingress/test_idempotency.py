"""Idempotency-Key on POST /jobs/*: replay, 422 for another body, 409 in flight, per tenant, expiry."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import orjson

from functions.ingress.idempotency import ABANDONED_SECONDS, prune_expired, request_hash
from shared.db.pool import open_pool
from tests.support.live import LiveApp

from .conftest import assert_problem

ECHO = {"function": "echo", "args": {"n": 1, "word": "hi"}}


def _post(client: httpx.Client, key: str, body: dict, path: str = "/jobs/default") -> httpx.Response:
    return client.post(path, json=body, headers={"Idempotency-Key": key})


def test_the_same_key_and_body_replays_the_first_answer(app: LiveApp):
    with app.client() as client:
        first = _post(client, "order-1", ECHO)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers
        again = _post(client, "order-1", ECHO)
        assert again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        # The same JSON written differently is the same request.
        reordered = json.dumps({"args": {"word": "hi", "n": 1}, "function": "echo"}, indent=2)
        same = client.post(
            "/jobs/default",
            content=reordered,
            headers={"Idempotency-Key": "order-1", "Content-Type": "application/json"},
        )
        assert same.json()["id"] == first.json()["id"]
    assert app.sql("SELECT count(*) FROM jobs") == [(1,)]


def test_the_same_key_with_another_body_is_422(app: LiveApp):
    with app.client() as client:
        assert _post(client, "order-2", ECHO).status_code == 201
        other = _post(client, "order-2", {**ECHO, "args": {"n": 2}})
        assert assert_problem(other, 422)["errors"][0]["path"] == "Idempotency-Key"
        # Another endpoint is another request too, even with the same body.
        webhook = {"url": "https://example.com/hook", "event": "x", "payload": {}}
        assert _post(client, "order-3", webhook, "/jobs/webhooks").status_code == 201
        assert_problem(_post(client, "order-3", webhook, "/jobs/exports"), 422)
    assert app.sql("SELECT count(*) FROM jobs") == [(2,)]


def test_a_request_while_the_first_is_in_flight_is_409_until_it_is_abandoned(app: LiveApp):
    digest = request_hash("POST", "/jobs/default", orjson.dumps(ECHO))
    app.sql("INSERT INTO idempotency_keys (tenant_id, key, request_hash) VALUES ('tenant-1', 'busy', %s)", (digest,))
    with app.client() as client:
        assert "in flight" in assert_problem(_post(client, "busy", ECHO), 409)["detail"]
        assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
        # A holder that never answered (its process died) gives the key up after a while.
        app.sql(
            "UPDATE idempotency_keys SET created_at = now() - make_interval(secs => %s) WHERE key = 'busy'",
            (ABANDONED_SECONDS + 1,),
        )
        taken_over = _post(client, "busy", ECHO)
        assert taken_over.status_code == 201
        assert _post(client, "busy", ECHO).json()["id"] == taken_over.json()["id"]


def test_concurrent_requests_with_one_key_create_one_job(app: LiveApp):
    barrier = threading.Barrier(8)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with app.client() as client:
            barrier.wait(timeout=30)
            response = _post(client, "race", ECHO)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 8
    [(count,)] = app.sql("SELECT count(*) FROM jobs")
    assert count == 1
    [(job_id,)] = app.sql("SELECT id FROM jobs")
    assert {r.status_code for r in answers} <= {201, 409}
    assert all(r.json()["id"] == job_id for r in answers if r.status_code == 201)


def test_keys_are_per_tenant(app: LiveApp):
    with app.client("tenant-a") as a, app.client("tenant-b") as b:
        job_a = _post(a, "shared-key", ECHO).json()
        job_b = _post(b, "shared-key", ECHO).json()
    assert job_a["id"] != job_b["id"]
    assert (job_a["tenantId"], job_b["tenantId"]) == ("tenant-a", "tenant-b")


def test_an_expired_key_is_new_again_and_pruned(app: LiveApp):
    with app.client() as client:
        first = _post(client, "old", ECHO).json()
        app.sql("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'")
        second = _post(client, "old", {**ECHO, "args": {"other": True}})
        assert second.status_code == 201 and second.json()["id"] != first["id"]
        _post(client, "stale", ECHO)
    app.sql("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'stale'")

    async def prune() -> int:
        pool = await open_pool(app.settings.database_url, max_size=1)
        try:
            return await prune_expired(pool)
        finally:
            await pool.close()

    assert asyncio.run(prune()) == 1
    assert app.sql("SELECT key FROM idempotency_keys") == [("old",)]


def test_unique_conflicts_and_bulk_batches_replay_too(app: LiveApp):
    unique = {**ECHO, "options": {"unique": {"period": 600}}}
    with app.client() as client:
        created = client.post("/jobs/default", json=unique).json()
        conflict = _post(client, "u-1", unique)
        assert conflict.status_code == 200 and conflict.json()["conflict"] is True
        replay = _post(client, "u-1", unique)
        assert replay.status_code == 200 and replay.json()["id"] == created["id"]
        bulk = {"subject": "Hi", "text": "Hello", "recipients": [{"to": "a@example.com"}, {"to": "b@example.com"}]}
        batch = _post(client, "bulk-1", bulk, "/jobs/emails/bulk")
        assert batch.status_code == 201
        assert _post(client, "bulk-1", bulk, "/jobs/emails/bulk").json() == batch.json()
    assert app.sql("SELECT count(*) FROM jobs WHERE queue = 'emails'") == [(2,)]


def test_failures_are_not_remembered(app: LiveApp):
    with app.client() as client:
        invalid = _post(client, "k-invalid", {"function": "echo", "args": {}, "surprise": 1})
        assert_problem(invalid, 422)
        assert app.sql("SELECT count(*) FROM idempotency_keys") == [(0,)]
        # The insert itself fails (a constraint only this test's database has): 422, and the key is freed.
        app.sql("ALTER TABLE jobs ADD CONSTRAINT test_refuse CHECK (args->>'refuse' IS NULL)")
        refused = _post(client, "k-fail", {"function": "echo", "args": {"refuse": 1}})
        assert_problem(refused, 422)
        assert app.sql("SELECT count(*) FROM idempotency_keys") == [(0,)]
        app.sql("ALTER TABLE jobs DROP CONSTRAINT test_refuse")
        assert _post(client, "k-fail", {"function": "echo", "args": {"refuse": 1}}).status_code == 201


def test_a_malformed_key_is_400(app: LiveApp):
    with app.client() as client:
        assert_problem(_post(client, "x" * 256, ECHO), 400)
        assert_problem(_post(client, "two words", ECHO), 400)
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
