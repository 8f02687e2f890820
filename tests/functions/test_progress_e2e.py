"""Progress end to end: what a handler reports through ctx.progress reaches the job JSON while it
runs (written with the heartbeat, not per report) and stays with the completed job."""

from __future__ import annotations

import time

import pytest

from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until


@pytest.fixture
def app(database_url, s3, tmp_path):
    from functions.registry import seed_queues
    from shared.storage import Storage

    settings = make_settings(
        database_url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
    )
    seed_queues(database_url, settings)
    Storage(settings).ensure_bucket()
    with live_app(settings) as live:
        yield live


def test_a_running_jobs_progress_is_shown_and_kept_when_it_completes(app: LiveApp, tmp_path):
    release = tmp_path / "release"
    items = 50_000
    with app.client() as client:
        job = client.post(
            "/jobs/default", json={"function": "report_progress", "args": {"total": items, "release": str(release)}}
        ).json()
        assert job["progress"] is None

        def running_with_progress() -> dict:
            view: dict = client.get(f"/jobs/{job['id']}").json()
            return view if view["state"] == "executing" and view["progress"] else {}

        running = wait_until("progress while running", running_with_progress)
    # 50,000 reports, and the row shows the last one: only the latest report is ever written.
    assert running["progress"] == {"done": items, "total": items, "message": f"item {items}"}
    release.write_text("go")
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "completed" and done["progress"]["done"] == items


def test_an_exports_progress_rises_monotonically_to_its_row_count(app: LiveApp):
    rows = 40_000
    app.sql(
        """INSERT INTO jobs (queue, worker, state, tenant_id, attempt, attempted_at, completed_at)
           SELECT 'default', 'echo', 'completed', 'tenant-1', 1, now(), now() FROM generate_series(1, %s)""",
        (rows,),
    )
    with app.client() as client:
        job = client.post("/jobs/exports", json={"dataset": "jobs", "format": "csv"}).json()
    seen: list[int] = []
    with app.admin() as admin:  # polling as admin: the tenant's rate limit is not the subject here
        while True:
            response = admin.get(f"/jobs/{job['id']}")
            assert response.status_code == 200, response.text
            view = response.json()
            if view["progress"] is not None:
                seen.append(view["progress"]["done"])
            if view["state"] in ("completed", "discarded", "cancelled"):
                break
            time.sleep(0.02)
    assert view["state"] == "completed", view
    exported = view["result"]["rows"]
    assert exported >= rows  # the export's own job row may be in its snapshot too
    assert seen == sorted(seen) and seen[-1] == exported
    assert view["progress"] == {"done": exported, "total": exported, "message": "rows written"}
