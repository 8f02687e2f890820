"""Group commit of plain job inserts: concurrent POSTs share statements, each still gets its own job."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from functions.ingress.batch_insert import BatchInserter
from shared.db.models import Job, NewJob
from shared.db.pool import open_pool
from shared.errors import ValidationFailed
from tests.support.live import LiveApp

from .conftest import assert_problem

WEBHOOK = {"url": "https://example.com/hook", "event": "invoice.paid", "payload": {"n": 1}}


def _inserter(app: LiveApp) -> BatchInserter:
    asgi: Any = app.server.config.app  # the Starlette app live_app serves
    inserter: BatchInserter = asgi.state.batch_inserter
    return inserter


async def _post_all(app: LiveApp, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {app.token()}"}
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(
        base_url=app.url, headers=headers, timeout=60, trust_env=False, limits=limits
    ) as client:
        return list(await asyncio.gather(*(client.post("/jobs/webhooks", json=body) for body in bodies)))


def test_200_concurrent_posts_each_get_their_own_job_in_fewer_statements(app: LiveApp):
    inserter = _inserter(app)
    flushes_before, jobs_before = inserter.flushes, inserter.jobs
    bodies = [{**WEBHOOK, "payload": {"n": n}} for n in range(200)]
    responses = asyncio.run(_post_all(app, bodies))
    assert [r.status_code for r in responses] == [201] * 200, [r.text for r in responses if r.status_code != 201]
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 200
    # Each answer is the job its own request asked for (futures resolved with the right rows).
    assert [r.json()["args"]["payload"]["n"] for r in responses] == list(range(200))
    rows = app.sql("SELECT id, (args->'payload'->>'n')::int FROM jobs WHERE queue = 'webhooks'")
    assert sorted(rows) == sorted(zip(ids, range(200), strict=True))
    assert inserter.jobs - jobs_before == 200
    # Batching really happened: fewer INSERT statements than requests.
    assert 1 <= inserter.flushes - flushes_before < 200


def test_an_invalid_batch_mate_does_not_affect_the_valid_requests(app: LiveApp):
    bad = {**WEBHOOK, "url": "not a url"}
    bodies = [WEBHOOK if n % 2 == 0 else bad for n in range(60)]
    responses = asyncio.run(_post_all(app, bodies))
    for body, response in zip(bodies, responses, strict=True):
        if body is bad:
            assert_problem(response, 422)
        else:
            assert response.status_code == 201, response.text
    created = sorted(r.json()["id"] for r in responses if r.status_code == 201)
    assert len(created) == 30
    assert sorted(row[0] for row in app.sql("SELECT id FROM jobs")) == created


def test_idempotent_and_unique_requests_keep_their_own_path(app: LiveApp):
    inserter = _inserter(app)
    before = inserter.flushes
    unique = {**WEBHOOK, "options": {"unique": {"period": 60}}}
    with app.client() as client:
        first = client.post("/jobs/webhooks", json=unique)
        again = client.post("/jobs/webhooks", json=unique)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        keyed = client.post("/jobs/webhooks", json=WEBHOOK, headers={"Idempotency-Key": "k-1"})
        replay = client.post("/jobs/webhooks", json=WEBHOOK, headers={"Idempotency-Key": "k-1"})
        assert keyed.status_code == replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
    assert inserter.flushes == before
    assert app.sql("SELECT count(*) FROM jobs") == [(2,)]


def _job(n: int, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {"queue": "default", "worker": "echo", "tenant_id": "t-1", "args": {"n": n}}
    return NewJob(**{**values, **overrides})


def test_a_member_the_database_refuses_fails_alone_and_its_batch_mates_are_inserted(app: LiveApp):
    async def scenario() -> None:
        pool = await open_pool(app.settings.database_url, max_size=2)
        inserter = BatchInserter(pool)
        inserter.start()
        try:
            # Queued together, flushed together: each bad member alone would fail the whole statement.
            results = await asyncio.gather(
                inserter.insert(_job(1)),
                inserter.insert(_job(2, priority=42)),  # passes Python, violates CHECK jobs_priority_range
                inserter.insert(_job(3)),
                inserter.insert(_job(4, args={"n": 2**64})),  # the JSON encoder refuses it
                inserter.insert(_job(5)),
                inserter.insert(_job(6, priority=10**6)),  # out of smallint range
                inserter.insert(_job(7)),
                return_exceptions=True,
            )
            good = [result for result in results if isinstance(result, Job)]
            assert [job.args for job in good] == [{"n": 1}, {"n": 3}, {"n": 5}, {"n": 7}], results
            reasons = {
                1: "the database refused it",
                3: "a value cannot be encoded as JSON",
                5: "the database refused it",
            }
            for index, reason in reasons.items():
                refused = results[index]
                assert isinstance(refused, ValidationFailed) and refused.status == 422, refused
                assert refused.errors == [{"path": "", "message": reason}]
            assert inserter.split == 1  # one statement failed, and its members were retried one by one
            job = await inserter.insert(_job(8))
            assert job.id and job.args == {"n": 8}
            with pytest.raises(ValueError):
                await inserter.insert(_job(9, unique_key="k"))
        finally:
            await inserter.close()
            await pool.close()
        with pytest.raises(RuntimeError):
            await inserter.insert(_job(10))

    asyncio.run(scenario())
    assert sorted(row[0] for row in app.sql("SELECT (args->>'n')::int FROM jobs")) == [1, 3, 5, 7, 8]


def test_an_unavailable_database_fails_the_batch_at_once_without_retries(app: LiveApp):
    async def scenario() -> None:
        pool = await open_pool(app.settings.database_url, max_size=2)
        inserter = BatchInserter(pool)
        inserter.start()
        try:
            await pool.close()  # every checkout now fails the way a dead database does (OperationalError)
            results = await asyncio.gather(*(inserter.insert(_job(n)) for n in range(3)), return_exceptions=True)
            assert all(isinstance(result, psycopg.OperationalError) for result in results), results
            assert inserter.split == 0
        finally:
            await inserter.close()

    asyncio.run(scenario())
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]
