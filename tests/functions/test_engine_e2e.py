"""The engine end to end with real machine processes: retries, snooze, cancel, kill -9, stalls."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from shared.storage import Storage
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until

# For the tests that SIGSTOP a machine: a machine launched within the boot grace counts as live
# whether or not it heartbeats, so with the default 30 s the rescued job waited that long for a
# new machine. Long enough for a machine to boot on a slow box; the rescue is what is tested.
BOOT_GRACE = 5.0


def _app(database_url, s3, tmp_path, **overrides):
    from functions.registry import seed_queues

    settings = make_settings(
        database_url,
        s3,
        default_function_modules=["tests.support.functions"],
        local_machine_log_dir=str(tmp_path / "logs"),
        **overrides,
    )
    seed_queues(database_url, settings)
    return live_app(settings)


@pytest.fixture
def app(database_url, s3, tmp_path):
    with _app(database_url, s3, tmp_path) as live:
        yield live


def _post(app: LiveApp, function: str, args: dict | None = None, **options) -> dict:
    with app.client() as client:
        response = client.post("/jobs/default", json={"function": function, "args": args or {}, "options": options})
    assert response.status_code == 201, response.text
    return response.json()


def test_machine_exits_zero_after_its_work(app):
    job = _post(app, "echo", {"x": 1})
    done = app.wait_for_job(job["id"], {"completed"})
    rows = wait_until(
        "machine exit",
        lambda: app.sql(
            "SELECT state, exit_code FROM machines WHERE id = %s AND state = 'exited'", (done["machineId"],)
        ),
    )
    assert rows == [("exited", 0)]


def test_failing_twice_then_succeeding_completes_at_attempt_three(app):
    job = _post(app, "flaky", {"succeed_on": 3})
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "completed"
    assert done["attempt"] == 3 and done["result"] == {"succeededOn": 3}
    assert [e["attempt"] for e in done["errors"]] == [1, 2]


def test_always_failing_job_is_discarded_with_one_error_per_attempt(app):
    job = _post(app, "always_fail", maxAttempts=3)
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "discarded" and done["attempt"] == 3
    assert [e["attempt"] for e in done["errors"]] == [1, 2, 3]
    assert done["discardedAt"] is not None


def test_permanent_error_discards_without_retry(app):
    job = _post(app, "permanent_fail", maxAttempts=5)
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "discarded" and done["attempt"] == 1
    assert done["errors"][0]["kind"] == "bad-input"


def test_snoozed_job_does_not_use_up_an_attempt(app):
    job = _post(app, "snooze_once", maxAttempts=1)
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "completed"
    assert done["attempt"] == 1 and done["result"] == {"attempt": 1, "snoozed": 1}


def test_cancelling_a_running_job_stops_it(app):
    job = _post(app, "sleep", {"seconds": 120})
    running = app.wait_for_job(job["id"], {"executing"})
    machine = running["machineId"]
    with app.client() as client:
        response = client.request("DELETE", "/jobs", params={"ids": str(job["id"])})
    assert response.json() == {"cancelled": 1}
    # The machine's process ends (handler aborted, then the dispatcher stops it / it idles out).
    wait_until(
        "machine of the cancelled job to exit",
        lambda: app.sql("SELECT 1 FROM machines WHERE id = %s AND state = 'exited'", (machine,)),
        timeout=20,
    )
    final = app.wait_for_job(job["id"], {"cancelled"})
    assert final["result"] is None and final["completedAt"] is None


def test_kill_9_of_a_machine_mid_job_rescues_and_completes_on_attempt_two(app):
    job = _post(app, "slow_first", {"seconds": 60})
    running = app.wait_for_job(job["id"], {"executing"})
    [(pid,)] = app.sql("SELECT (detail->>'pid')::int FROM machines WHERE id = %s", (running["machineId"],))
    os.kill(pid, signal.SIGKILL)
    done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=60)
    assert done["state"] == "completed" and done["attempt"] == 2
    assert done["errors"][0]["kind"] == "rescued"
    assert done["machineId"] != running["machineId"]
    [(code,)] = app.sql("SELECT exit_code FROM machines WHERE id = %s", (running["machineId"],))
    assert code == 137


def test_stalled_holder_cannot_overwrite_the_outcome(database_url, s3, tmp_path):
    """SIGSTOP the holder past its heartbeat; another machine completes the job; SIGCONT changes nothing."""
    with _app(database_url, s3, tmp_path, lifeline_rescue_after=2, machine_boot_grace_seconds=BOOT_GRACE) as app:
        job = _post(app, "slow_first", {"seconds": 3})
        running = app.wait_for_job(job["id"], {"executing"})
        stalled = running["machineId"]
        [(pid,)] = app.sql("SELECT (detail->>'pid')::int FROM machines WHERE id = %s", (stalled,))
        os.kill(pid, signal.SIGSTOP)
        try:
            done = app.wait_for_job(job["id"], {"completed"}, timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert done["attempt"] == 2 and done["machineId"] != stalled
        # The stalled machine wakes with its sleep over and tries to complete attempt 1: refused.
        wait_until(
            "stalled machine to exit",
            lambda: app.sql("SELECT 1 FROM machines WHERE id = %s AND state = 'exited'", (stalled,)),
            timeout=30,
        )
        with app.admin() as client:
            after = client.get(f"/jobs/{job['id']}").json()
        assert after["state"] == "completed" and after["attempt"] == 2
        assert after["result"] == done["result"] and after["result"]["machine"] != stalled
        log = (tmp_path / "logs" / f"{stalled}.log").read_text()
        # Either its heartbeat noticed first (aborting the handler) or its fenced write was refused.
        assert "job lost" in log or "no longer held" in log


def test_timed_out_job_is_stopped_and_its_machine_exits(database_url, s3, tmp_path):
    with _app(database_url, s3, tmp_path, worker_default_timeout=1000) as app:
        job = _post(app, "sleep", {"seconds": 30}, maxAttempts=1)
        done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=30)
        assert done["state"] == "discarded"
        assert done["errors"][0]["kind"] == "timeout"
        rows = wait_until(
            "machine exit",
            lambda: app.sql("SELECT exit_code FROM machines WHERE id = %s AND state = 'exited'", (done["machineId"],)),
        )
        assert rows == [(3,)]


def test_sigterm_hands_a_running_job_back_without_using_an_attempt(database_url, s3, tmp_path):
    with _app(database_url, s3, tmp_path, machine_shutdown_grace_seconds=1) as app:
        _sigterm_hand_back(app, tmp_path)


def _sigterm_hand_back(app, tmp_path):
    job = _post(app, "slow_once", {"marker_dir": str(tmp_path), "seconds": 60}, maxAttempts=1)
    running = app.wait_for_job(job["id"], {"executing"})
    [(pid,)] = app.sql("SELECT (detail->>'pid')::int FROM machines WHERE id = %s", (running["machineId"],))
    # The handler outlives the grace period, so the machine hands the job back and exits.
    os.kill(pid, signal.SIGTERM)
    wait_until(
        "machine to exit after SIGTERM",
        lambda: app.sql("SELECT 1 FROM machines WHERE id = %s AND state = 'exited'", (running["machineId"],)),
        timeout=40,
    )
    # Handed back with its attempt refunded, then run again on a new machine: still attempt 1.
    done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=30)
    assert done["state"] == "completed" and done["errors"] == [] and done["attempt"] == 1
    assert done["machineId"] != running["machineId"]


def test_a_timed_out_jobs_thread_work_really_stops(database_url, s3, tmp_path):
    """The handler's blocking thread outlasts the 1 s timeout: the failure is recorded and the
    machine process ends at once, so the thread never gets to its side effect."""
    markers = tmp_path / "markers"
    markers.mkdir()
    with _app(database_url, s3, tmp_path, worker_default_timeout=1000) as app:
        job = _post(app, "thread_overrun", {"marker_dir": str(markers), "seconds": 4}, maxAttempts=1)
        done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=60)
        assert done["state"] == "discarded" and done["errors"][0]["kind"] == "timeout"
        rows = wait_until(
            "machine exit",
            lambda: app.sql("SELECT exit_code FROM machines WHERE id = %s AND state = 'exited'", (done["machineId"],)),
        )
        assert rows == [(3,)]
        time.sleep(5)  # past the moment the thread would have written its marker
    assert list(markers.iterdir()) == []


def test_a_stalled_holder_can_neither_overwrite_nor_delete_the_winners_output(database_url, s3, tmp_path):
    """Both attempts store `out.txt`; the stalled first wakes after the second completed, is fenced
    out and withdraws what it stored: under its own claim, so the winner's download still works."""
    with _app(database_url, s3, tmp_path, lifeline_rescue_after=2, machine_boot_grace_seconds=BOOT_GRACE) as app:
        Storage(app.settings).ensure_bucket()
        job = _post(app, "store_output", {"seconds": 4})
        running = app.wait_for_job(job["id"], {"executing"})
        stalled = running["machineId"]
        [(pid,)] = app.sql("SELECT (detail->>'pid')::int FROM machines WHERE id = %s", (stalled,))
        wait_until("the first attempt's output", lambda: _objects(app, job["id"]), timeout=30)
        os.kill(pid, signal.SIGSTOP)
        try:
            done = app.wait_for_job(job["id"], {"completed"}, timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(
            "stalled machine to exit",
            lambda: app.sql("SELECT 1 FROM machines WHERE id = %s AND state = 'exited'", (stalled,)),
            timeout=30,
        )
        with app.client() as client:
            after = client.get(f"/jobs/{job['id']}").json()
        assert after["attempt"] == 2 and after["result"]["machine"] != stalled
        [output] = after["result"]["outputs"]
        assert output == {**done["result"]["outputs"][0], "url": output["url"], "expiresAt": output["expiresAt"]}
        assert httpx.get(output["url"], trust_env=False).content == b"attempt 2"
        assert _objects(app, job["id"]) == [output["key"]], "the stalled attempt's object was withdrawn, only it"


def test_no_result_a_tenant_shapes_names_another_tenants_object(database_url, s3, tmp_path):
    """Tenant B's echo names tenant A's output in its args: B's completed job shows no outputs and
    no URL, and A's object is untouched."""
    with _app(database_url, s3, tmp_path) as app:
        Storage(app.settings).ensure_bucket()
        theirs = _post(app, "store_output", {})
        done = app.wait_for_job(theirs["id"], {"completed"})
        key = done["result"]["outputs"][0]["key"]
        forged = {
            "outputs": [{"name": "x", "key": key}, {"name": "y", "key": f"tenants/tenant-1/jobs/{theirs['id']}/"}]
        }
        with app.client("tenant-2") as other:
            response = other.post("/jobs/default", json={"function": "echo", "args": forged})
            assert response.status_code == 201
            echo = app.wait_for_job(response.json()["id"], {"completed"})
            seen = other.get(f"/jobs/{echo['id']}").json()
            assert other.get(f"/jobs/{theirs['id']}").status_code == 404
        assert seen["state"] == "completed" and "outputs" not in seen["result"]
        assert "url" not in json.dumps(seen)
        with app.client() as owner:
            mine = owner.get(f"/jobs/{theirs['id']}").json()["result"]["outputs"][0]
        assert httpx.get(mine["url"], trust_env=False).content == b"attempt 1"


def _objects(app: LiveApp, job_id: int) -> list[str]:
    storage = Storage(app.settings)
    listed = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=f"tenants/tenant-1/jobs/{job_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_a_result_that_could_not_be_read_back_fails_the_attempt_instead(app):
    job = _post(app, "unstorable_result", maxAttempts=3)
    done = app.wait_for_job(job["id"], {"completed", "discarded"})
    assert done["state"] == "discarded" and done["attempt"] == 1
    assert done["errors"][0]["kind"] == "unstorable-result" and "result.big" in done["errors"][0]["error"]
    with app.client() as client:
        assert client.get("/jobs", params={"state": "discarded"}).status_code == 200
