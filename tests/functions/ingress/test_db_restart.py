"""A database restart while jobs flow: /health says 503 meanwhile, then everything recovers by
itself (API pool, dispatcher leadership, machines) and no job is lost or committed twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from functions.registry import seed_queues
from infra.local.postgres import LocalPostgres
from infra.local.s3 import LocalS3
from shared.db.migrate import migrate
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until

from .conftest import assert_problem


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    # Our own cluster: restarting the session's shared one would break every other test.
    cluster = LocalPostgres(tmp_path / "pg", durable=False)
    cluster.start()
    try:
        migrate(cluster.url)
        yield cluster
    finally:
        cluster.destroy()


def _health(app: LiveApp) -> httpx.Response:
    with httpx.Client(base_url=app.url, trust_env=False, timeout=10) as client:
        return client.get("/health")


def _post_runs(app: LiveApp, markers: Path, count: int, seconds: float) -> list[int]:
    with app.client() as client:
        return [
            client.post(
                "/jobs/default",
                json={"function": "record_run", "args": {"marker_dir": str(markers), "seconds": seconds}},
            ).json()["id"]
            for _ in range(count)
        ]


def _markers(markers: Path) -> Counter[int]:
    """Executions per job id: record_run writes one `<job>-<attempt>-<pid>` file per execution."""
    return Counter(int(path.name.split("-")[0]) for path in markers.iterdir())


def test_the_service_rides_out_a_database_restart(own_postgres: LocalPostgres, s3: LocalS3, tmp_path: Path):
    settings = make_settings(
        own_postgres.url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
        lifeline_rescue_after=5,  # heartbeats every 0.5 s: a job whose holder died is rescued soon
    )
    seed_queues(own_postgres.url, settings)
    markers = tmp_path / "markers"
    markers.mkdir()
    with live_app(settings) as app:
        wait_until("the dispatcher to lead", lambda: _health(app).json().get("dispatcher") == "leader")
        before = _post_runs(app, markers, 3, 0.0)
        for job_id in before:
            app.wait_for_job(job_id, {"completed"})
        during = _post_runs(app, markers, 3, 2.0)  # in flight when the database goes away
        wait_until("a job to execute", lambda: any(_markers(markers)[j] for j in during))

        own_postgres.stop("fast")
        down = wait_until("/health to report the outage", lambda: (r := _health(app)).status_code == 503 and r)
        assert isinstance(down, httpx.Response)
        assert down.json()["database"] == "unreachable" and down.json()["status"] == "unavailable"
        with app.client() as client:
            refused = client.post("/jobs/default", json={"function": "echo"})
        assert_problem(refused, 503)
        assert refused.headers["retry-after"] == "5"

        own_postgres.start()  # same port, same data
        wait_until("/health to recover", lambda: _health(app).status_code == 200)
        wait_until("the dispatcher to lead again", lambda: _health(app).json()["dispatcher"] == "leader")
        after = _post_runs(app, markers, 3, 0.0)

        jobs = {
            job_id: app.wait_for_job(job_id, {"completed", "discarded"}, timeout=120)
            for job_id in before + during + after
        }
    assert {job["state"] for job in jobs.values()} == {"completed"}
    runs = _markers(markers)
    # At least once, never lost: each attempt the database knows of ran exactly once...
    assert {job_id: runs[job_id] for job_id in jobs} == {job_id: job["attempt"] for job_id, job in jobs.items()}
    # ...and jobs that were not running during the outage ran exactly once.
    assert all(runs[job_id] == 1 for job_id in before + after)
