"""Admin API against a running dispatcher and real machines: pause, resume and scale hold fleet-wide."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from functions.registry import load_registry
from tests.support.live import LiveApp

from .conftest import OpenApp, assert_problem


@pytest.fixture
def engine(open_app: OpenApp, tmp_path: Path) -> Iterator[LiveApp]:
    with open_app(
        run_dispatcher=True,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
    ) as live:
        yield live


def _wait_leader(app: LiveApp) -> None:
    with app.admin() as admin:
        deadline = time.monotonic() + 30
        while admin.get("/health").json()["dispatcher"] != "leader":
            assert time.monotonic() < deadline, "the dispatcher never became leader"
            time.sleep(0.1)


def test_a_paused_queue_launches_nothing_until_resumed(engine: LiveApp):
    _wait_leader(engine)
    with engine.admin() as admin, engine.client() as client:
        paused = admin.post("/admin/queues/default/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        ids = [client.post("/jobs/default", json={"function": "echo", "args": {"i": i}}).json()["id"] for i in range(3)]
        # Watch the dispatcher work for a while (it ticks every 0.2 s): nothing may start.
        ticks = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert engine.sql("SELECT count(*) FROM machines WHERE queue = 'default'") == [(0,)]
            states = engine.sql("SELECT DISTINCT state FROM jobs WHERE id = ANY(%s)", (ids,))
            assert states == [("available",)]
            ticks += 1
            time.sleep(0.2)
        assert ticks >= 5
        status = admin.get("/admin/queues/default").json()
        assert status["state"] == "paused" and status["available"] == 3
        resumed = admin.post("/admin/queues/default/resume")
        assert resumed.json()["state"] == "running"
    for job_id in ids:
        assert engine.wait_for_job(job_id, {"completed"})["state"] == "completed"
    assert engine.sql("SELECT count(*) > 0 FROM machines WHERE queue = 'default'") == [(True,)]


def test_scaled_to_one_never_runs_two_at_once(engine: LiveApp):
    _wait_leader(engine)
    with engine.admin() as admin, engine.client() as client:
        scaled = admin.post("/admin/queues/default/scale", json={"limit": 1})
        assert scaled.status_code == 200 and scaled.json()["limit"] == 1
        ids = [
            client.post("/jobs/default", json={"function": "sleep", "args": {"seconds": 1}}).json()["id"]
            for _ in range(4)
        ]
    most, samples = 0, 0
    deadline = time.monotonic() + 90
    while True:
        [(executing, finished)] = engine.sql(
            "SELECT count(*) FILTER (WHERE state = 'executing'), count(*) FILTER (WHERE state = 'completed')"
            " FROM jobs WHERE id = ANY(%s)",
            (ids,),
        )
        most, samples = max(most, executing), samples + 1
        if finished == len(ids):
            break
        assert time.monotonic() < deadline, "the sleep jobs did not finish"
        time.sleep(0.05)
    assert most == 1, f"at most one job may execute; saw {most}"
    assert samples > 20


def test_scale_to_zero_stops_a_queue_and_bad_requests_are_refused(app: LiveApp):
    with app.admin() as admin:
        stopped = admin.post("/admin/queues/images/scale", json={"limit": 0})
        assert stopped.json()["state"] == "stopped"
        assert_problem(admin.post("/admin/queues/images/scale", json={"limit": 1001}), 422)
        assert_problem(admin.post("/admin/queues/images/scale", json={}), 422)
        assert_problem(admin.post("/admin/queues/nope/scale", json={"limit": 1}), 404)
        assert_problem(admin.post("/admin/queues/nope/pause"), 404)
        assert_problem(admin.post("/admin/queues/nope/resume"), 404)
        assert_problem(admin.get("/admin/queues/nope"), 404)
        names = [q["name"] for q in admin.get("/admin/queues").json()]
        assert names == sorted(load_registry())  # one queue per declared function
    assert app.sql("SELECT \"limit\" FROM queues WHERE name = 'images'") == [(0,)]


def test_health_reports_database_dispatcher_and_queues(engine: LiveApp, app: LiveApp):
    _wait_leader(engine)
    with engine.client() as client:
        health = client.get("/health").json()
    assert health["status"] == "ok" and health["database"] == "ok" and health["dispatcher"] == "leader"
    assert {q["name"] for q in health["queues"]} >= {"default", "images"}
    with app.client() as client:
        assert client.get("/health").json()["dispatcher"] == "off"


# Each would mean 0 if pydantic's lax integer parsing or a repeated key's last value were let
# through; the document allows neither (an integer parameter, given once).
_NOT_AN_AGE = ["0.0", "%200", "0%20", "0%0A", "%090", "%C2%A00", "0_0", "abc&{name}=0", "0&{name}=1", "0&{name}=0"]
_REFUSED_BEFORE = ["", "-1", "abc", "1e1", "null"]


def test_prune_and_rescue_refuse_query_values_the_document_forbids_and_change_nothing(app: LiveApp):
    [(executing,)] = app.sql(
        """INSERT INTO jobs (queue, worker, tenant_id, state, attempt, attempted_by, attempted_at, heartbeat_at,
                             claim_token)
           VALUES ('default', 'echo', 't', 'executing', 1, 'm-1', now(), now() - interval '10 seconds',
                   gen_random_uuid())
           RETURNING id"""
    )
    [(completed,)] = app.sql(
        """INSERT INTO jobs (queue, worker, tenant_id, state, completed_at)
           VALUES ('default', 'echo', 't', 'completed', now() - interval '10 seconds') RETURNING id"""
    )
    with app.admin() as admin:
        for path, name in [("/admin/jobs/rescue", "rescueAfterSeconds"), ("/admin/jobs/prune", "maxAgeSeconds")]:
            for value in [*_NOT_AN_AGE, *_REFUSED_BEFORE]:
                query = f"{name}={value.format(name=name)}"
                body = assert_problem(admin.post(f"{path}?{query}"), 422)
                assert [e["path"] for e in body["errors"]] == [name], (query, body)
            assert_problem(admin.post(f"{path}?{name}"), 422)  # no value at all
        states = app.sql("SELECT id, state FROM jobs WHERE id = ANY(%s) ORDER BY id", ([executing, completed],))
        assert states == [(executing, "executing"), (completed, "completed")]
        # The same ages written plainly do what they say.
        assert admin.post("/admin/jobs/rescue?rescueAfterSeconds=0").json() == {"rescued": 1}
        assert admin.post("/admin/jobs/prune?maxAgeSeconds=0").json() == {"pruned": 1}
