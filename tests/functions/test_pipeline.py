"""End to end: HTTP -> Postgres -> dispatcher -> local machine process -> result."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app


@pytest.fixture
def app(database_url, s3, tmp_path):
    from functions.registry import seed_queues

    settings = make_settings(
        database_url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
    )
    seed_queues(database_url, settings)
    with live_app(settings) as live:
        yield live


def test_echo_job_runs_on_a_launched_machine(app: LiveApp):
    with app.client() as client:
        created = client.post("/jobs/default", json={"function": "echo", "args": {"hello": "world"}})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] == "available" and job["worker"] == "echo"
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "completed"
    assert done["result"] == {"hello": "world"}
    machine = app.sql("SELECT id, queue, launcher FROM machines WHERE id = %s", (done["machineId"],))
    assert machine == [(done["machineId"], "default", "local")]
