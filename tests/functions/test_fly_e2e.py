"""LAUNCHER=fly end to end: the dispatcher creates machines through the Machines API emulator
(a test double that runs each machine's command as a local process) over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from functions.registry import seed_queues
from infra.fly_emulator import Chaos, running_emulator
from infra.fly_emulator.harness import Emulator
from shared import telemetry
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app, wait_until
from tests.support.receivers import http_receiver

TOKEN = "fly-test-token"
WORKER_APP = "cp-worker"


@contextmanager
def fly_system(database_url, s3, **overrides) -> Iterator[tuple[LiveApp, Emulator]]:
    common = {"default_function_modules": ["tests.support.functions"], "outbound_allowlist": ["127.0.0.1"], **overrides}
    machine_settings = make_settings(database_url, s3, **common)
    seed_queues(database_url, machine_settings)
    # The emulator's base env plays the worker app's secrets: what machines read on Fly.
    with running_emulator(base_env=machine_settings.machine_env(), token=TOKEN, apps=[WORKER_APP]) as emulator:
        settings = make_settings(
            database_url,
            s3,
            **common,
            bucket_name=machine_settings.bucket_name,
            launcher="fly",
            fly_api_hostname=emulator.url,
            fly_api_token=TOKEN,
            fly_worker_app=WORKER_APP,
            worker_image="registry.fly.io/cp-worker:test",
            fly_region="iad",
        )
        with live_app(settings) as app:
            yield app, emulator


def _post(app: LiveApp, queue: str, body: dict) -> dict:
    with app.client() as client:
        response = client.post(f"/jobs/{queue}", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _creates(emulator: Emulator) -> list:
    return [r for r in emulator.requests_to("POST", "/machines") if r.status == 200]


def test_jobs_run_on_emulated_machines_created_as_specified(database_url, s3):
    with fly_system(database_url, s3) as (app, emulator), http_receiver([(200, {}, 0.0)]) as receiver:
        echo = _post(app, "default", {"function": "echo", "args": {"via": "fly"}})
        hook = _post(app, "webhooks", {"url": receiver.url, "event": "e", "payload": {"x": 1}})
        done_echo = app.wait_for_job(echo["id"], {"completed", "discarded"})
        done_hook = app.wait_for_job(hook["id"], {"completed", "discarded"})
        assert done_echo["state"] == "completed" and done_echo["result"] == {"via": "fly"}
        assert done_hook["state"] == "completed" and len(receiver.requests) == 1
        creates = {r.json["config"]["metadata"]["cp_queue"]: r.json for r in _creates(emulator)}
        assert set(creates) == {"default", "webhooks"}
        for queue, body in creates.items():
            config = body["config"]
            assert config["auto_destroy"] is True
            assert config["restart"] == {"policy": "no"}
            assert config["image"] == "registry.fly.io/cp-worker:test"
            assert config["init"]["cmd"] == ["python", "-m", "functions.machine"]
            assert config["env"]["JOB_QUEUE"] == queue
            assert "DATABASE_URL" not in config["env"] and "AWS_SECRET_ACCESS_KEY" not in config["env"]
            assert config["metadata"]["cp_role"] == "function-machine"
            assert config["guest"]["cpus"] == 1 and config["guest"]["cpu_kind"] == "shared"
            assert body.get("region") == "iad"
        assert creates["default"]["config"]["metadata"]["cp_job_id"] == str(echo["id"])
        # machines run with their Fly machine id, which the job records as its holder
        assert {m["id"] for m in emulator.machines} >= {done_echo["machineId"], done_hook["machineId"]}


def test_create_429_and_503_are_retried(database_url, s3):
    with fly_system(database_url, s3) as (app, emulator):
        emulator.faults.fail_next_creates(429)
        emulator.faults.fail_next_creates(503)
        job = _post(app, "default", {"function": "echo", "args": {}})
        done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=60)
        assert done["state"] == "completed"
        statuses = [r.status for r in emulator.requests_to("POST", "/machines")]
        assert statuses[:3] == [429, 503, 200]


def test_408_that_created_the_machine_does_not_create_a_second(database_url, s3):
    with fly_system(database_url, s3) as (app, emulator):
        emulator.faults.create_but_time_out()
        job = _post(app, "default", {"function": "echo", "args": {}})
        done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=60)
        assert done["state"] == "completed"
        assert [r.status for r in emulator.requests_to("POST", "/machines")] == [408]
        assert len(emulator.machines) == 1


def test_oom_killed_machine_mid_job_leads_to_rescue_and_retry(database_url, s3):
    with fly_system(database_url, s3) as (app, emulator):
        job = _post(app, "default", {"function": "slow_first", "args": {"seconds": 120}})
        # The kill lands while the job runs, however long the machine took to boot on a busy box
        # (a fixed 3 s after start once killed a machine still importing, before its claim).
        running = app.wait_for_job(job["id"], {"executing"}, timeout=60)
        killed = httpx.post(
            f"{emulator.url}/_emu/machines/{running['machineId']}/exit",
            json={"exit_code": 137, "oom_killed": True},
            headers={"Authorization": f"Bearer {TOKEN}"},
            trust_env=False,
        )
        assert killed.status_code == 200, killed.text
        done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=90)
        assert done["state"] == "completed" and done["attempt"] == 2
        assert done["errors"][0]["kind"] == "rescued"
        rows = app.sql("SELECT exit_code, oom_killed FROM machines WHERE oom_killed")
        assert rows == [(137, True)]


def test_cancelled_running_jobs_machine_is_stopped_through_the_api(database_url, s3):
    with fly_system(database_url, s3) as (app, emulator):
        job = _post(app, "default", {"function": "sleep", "args": {"seconds": 120}})
        running = app.wait_for_job(job["id"], {"executing"}, timeout=60)
        with app.client() as client:
            assert client.request("DELETE", "/jobs", params={"ids": job["id"]}).json() == {"cancelled": 1}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not emulator.requests_to(
            "POST", f"/machines/{running['machineId']}/stop"
        ):
            time.sleep(0.1)
        assert emulator.requests_to("POST", f"/machines/{running['machineId']}/stop")
        emulator.wait_for_state(running["machineId"], "stopped", "destroyed", timeout=30)
        assert app.wait_for_job(job["id"], {"cancelled"})["completedAt"] is None


@contextmanager
def leadership_changes() -> Iterator[list[telemetry.Event]]:
    """Every `plugin:start` of a leader and every dispatcher `plugin:error` while the block runs."""
    seen: list[telemetry.Event] = []

    def keep(event: telemetry.Event) -> None:
        if (event.name == "plugin:start" and event.get("role") == "leader") or (
            event.name == "plugin:error" and event.get("plugin") == "dispatcher"
        ):
            seen.append(event)

    unsubscribe = telemetry.subscribe(keep)
    try:
        yield seen
    finally:
        unsubscribe()


def _health(app: LiveApp) -> dict:
    with app.client() as client:
        body: dict = client.get("/health").json()
    return body


def test_the_dispatcher_keeps_leadership_through_fly_errors_and_a_revoked_token(database_url, s3):
    with leadership_changes() as changes, fly_system(database_url, s3) as (app, emulator):
        wait_until("a leader", lambda: _health(app)["dispatcher"] == "leader")
        first = _post(app, "default", {"function": "echo", "args": {"n": 1}})
        app.wait_for_job(first["id"], {"completed"}, timeout=60)
        wait_until("the first machine to go", lambda: not emulator.not_destroyed())

        emulator.faults.fail_auth(401)  # the token was revoked
        blocked = _post(app, "default", {"function": "echo", "args": {"n": 2}})
        alerts: list = wait_until("the token alert in /health", lambda: _health(app).get("alerts") or [])
        assert alerts[0]["kind"] == "auth" and alerts[0]["status"] == 401
        assert _health(app)["dispatcher"] == "leader"
        with app.client() as client:
            assert 'launcher_alerts{kind="auth"} 1.0' in client.get("/metrics").text
        assert app.sql("SELECT state FROM jobs WHERE id = %s", (blocked["id"],)) == [("available",)]

        emulator.faults.fail_auth(None)  # the token was replaced
        app.wait_for_job(blocked["id"], {"completed"}, timeout=60)
        wait_until("the alert to clear", lambda: "alerts" not in _health(app))
        # A machine still up would take the next jobs without one API call, and the storm would
        # then test nothing (CI saw 0 faults injected).
        wait_until("the second machine to go", lambda: not emulator.not_destroyed())

        emulator.faults.set_chaos(Chaos(seed=3, call_5xx=0.3, call_reset=0.1))  # Fly has a bad minute
        stormy = [_post(app, "default", {"function": "echo", "args": {"n": n}}) for n in range(3, 6)]
        for job in stormy:
            assert app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=90)["state"] == "completed"
        emulator.faults.set_chaos(None)
        assert emulator.faults.injected["5xx"] + emulator.faults.injected["reset"] > 0
        assert _health(app)["dispatcher"] == "leader"
    assert [e.name for e in changes] == ["plugin:start"]  # led once, never lost it


def test_jobs_run_once_when_new_machines_are_invisible_for_a_while(database_url, s3, tmp_path: Path):
    with fly_system(database_url, s3) as (app, emulator):
        emulator.faults.invisible_seconds = 4.0  # every new machine: 404 and missing from list
        jobs = [
            _post(app, "default", {"function": "record_run", "args": {"marker_dir": str(tmp_path), "seconds": 3}})
            for _ in range(3)
        ]
        for job in jobs:
            done = app.wait_for_job(job["id"], {"completed", "discarded"}, timeout=90)
            assert (done["state"], done["attempt"]) == ("completed", 1)
        runs = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
        assert runs == sorted(str(job["id"]) for job in jobs)  # each ran exactly once
        gets = emulator.requests_to("GET")
        assert any(r.status == 404 and r.action == "get" for r in gets)  # the reconciler did meet the 404s
