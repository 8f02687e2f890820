"""A dispatcher duty that fails every time is isolated: it backs off and is counted, while the
other duties keep launching machines and the leader keeps its leadership."""

from __future__ import annotations

from pathlib import Path

from functions.registry import seed_queues
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until
from tests.support.metrics import scrape

# Fails the stager's own statement (scheduled/retryable -> available) through real SQL.
BREAK_STAGER = """
CREATE FUNCTION test_break_stager() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'injected stager fault for job %', OLD.id;
END
$$;
CREATE TRIGGER test_break_stager BEFORE UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state IN ('scheduled', 'retryable') AND NEW.state = 'available')
    EXECUTE FUNCTION test_break_stager();
"""


def duty_errors(app: LiveApp) -> dict[str, float]:
    return {
        dict(labels)["duty"]: value
        for (name, labels), value in scrape(app).items()
        if name == "dispatcher_duty_errors_total"
    }


def _lease(app: LiveApp) -> tuple[str, int]:
    [(holder, term)] = app.sql("SELECT holder, term FROM dispatcher_lease")
    return holder, term


def _role(app: LiveApp) -> str:
    with app.admin() as admin:
        return str(admin.get("/health").json()["dispatcher"])


def test_a_failing_stager_leaves_launches_and_leadership_alone(database_url, s3, tmp_path: Path):
    settings = make_settings(
        database_url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
        dispatcher_duty_backoff_max_seconds=1.0,
    )
    seed_queues(database_url, settings)
    with live_app(settings) as app:
        wait_until("the dispatcher to lead", lambda: _role(app) == "leader", timeout=30)
        lease = _lease(app)
        app.sql(BREAK_STAGER)
        with app.client() as client:
            scheduled = client.post("/jobs/default", json={"function": "echo", "options": {"scheduleIn": 1}}).json()
        wait_until("the stager to fail repeatedly", lambda: duty_errors(app).get("stager", 0) >= 3, timeout=60)

        # Everything else still works: a job that is due now gets a machine and completes.
        with app.client() as client:
            other = client.post("/jobs/default", json={"function": "echo", "args": {"x": 1}}).json()
        assert app.wait_for_job(other["id"], {"completed"}, timeout=60)["state"] == "completed"
        assert _role(app) == "leader" and _lease(app) == lease, "a failing duty must not cost the leadership"
        assert set(duty_errors(app)) == {"stager"}
        assert app.sql("SELECT state FROM jobs WHERE id = %s", (scheduled["id"],)) == [("scheduled",)]

        # Repaired, the stager catches up on its own (its backoff is capped and reset on success).
        app.sql("DROP TRIGGER test_break_stager ON jobs")
        assert app.wait_for_job(scheduled["id"], {"completed"}, timeout=60)["state"] == "completed"
        assert _lease(app) == lease
