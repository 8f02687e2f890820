"""The Machines API emulator against the reference's fidelity checklist (section 11), over HTTP.

Machines run small `python -c` scripts, so these tests need nothing but the emulator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.fly_emulator import Emulator, running_emulator
from infra.fly_emulator.supervisor import REPO_ROOT
from infra.fly_emulator.wire import image_ref, parse_duration_seconds, wait_timeout
from infra.local.postgres import free_port

TOKEN = "fm2_emulator-test-token"
APP = "cp-worker"
MACHINES = f"/v1/apps/{APP}/machines"
SLEEP_FOREVER = "import time\nwhile True: time.sleep(0.05)"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    secrets = {"SECRET_ONLY": "from-secrets", "SHARED": "secret-wins"}
    with running_emulator(secrets, token=TOKEN, apps=[APP]) as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Iterator[httpx.Client]:
    emu.faults.clear()
    emu.limiter.reset()
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}, timeout=90) as client:
        yield client


def py(code: str, **config: Any) -> dict[str, Any]:
    """A create body whose machine runs `python -c code`."""
    return {"config": {"image": "registry.fly.io/cp-worker:test", "init": {"cmd": ["python", "-c", code]}, **config}}


def create(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(MACHINES, json=body)
    assert response.status_code == 200, response.text
    machine: dict[str, Any] = response.json()
    return machine


def exits(machine: dict[str, Any]) -> list[dict[str, Any]]:
    """The exit_event of every exit event, newest first."""
    return [e["request"]["exit_event"] for e in machine["events"] if e["type"] == "exit"]


def test_the_token_is_required_in_each_accepted_form(emu: Emulator) -> None:
    with httpx.Client(base_url=emu.url) as client:
        assert client.get(MACHINES).status_code == 401
        assert client.get(MACHINES, headers={"Authorization": "Bearer wrong"}).status_code == 401
        for header in (f"Bearer {TOKEN}", f"Bearer FlyV1 {TOKEN}", f"FlyV1 {TOKEN}"):
            assert client.get(MACHINES, headers={"Authorization": header}).status_code == 200


def test_unknown_app_and_machine_are_404_with_an_error_body(api: httpx.Client) -> None:
    missing = api.get(f"{MACHINES}/0123456789abcd")
    assert missing.status_code == 404
    assert missing.json() == {"error": "machine not found"}
    assert api.get("/v1/apps/someone-else/machines").status_code == 404


def test_create_requires_an_image(api: httpx.Client) -> None:
    response = api.post(MACHINES, json={"config": {"env": {}}})
    assert response.status_code == 422
    assert "image" in response.json()["error"]


def test_create_answers_created_and_the_machine_runs_with_secrets_and_its_id(
    api: httpx.Client, emu: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    script = (
        "import importlib.util, json, os, sys\n"
        f"json.dump({{'env': dict(os.environ), 'cwd': os.getcwd(), 'exe': sys.executable,"
        f" 'machine_module': importlib.util.find_spec('functions.machine') is not None}}, open({str(out)!r}, 'w'))"
    )
    body = py(script, env={"JOB_QUEUE": "images", "SHARED": "config"}, restart={"policy": "no"})
    body["region"] = "ams"
    machine = create(api, body)

    assert machine["state"] == "created"
    assert re.fullmatch(r"[0-9a-f]{14}", machine["id"])
    assert len(machine["instance_id"]) == 26
    assert machine["private_ip"].startswith("fdaa:")
    assert machine["region"] == "ams"
    assert machine["name"]
    assert [(e["type"], e["status"], e["source"]) for e in machine["events"]] == [("launch", "created", "user")]
    assert machine["config"]["dns"] == {}
    assert machine["image_ref"]["registry"] == "registry.fly.io"

    done = api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "stopped", "timeout": 30})
    assert done.status_code == 200
    assert done.json()["ok"] is True and done.json()["state"] == "stopped"
    seen = json.loads(out.read_text())
    env = seen["env"]
    assert env["FLY_MACHINE_ID"] == machine["id"]
    assert env["FLY_APP_NAME"] == APP and env["FLY_REGION"] == "ams"
    assert env["JOB_QUEUE"] == "images"
    assert env["SECRET_ONLY"] == "from-secrets"
    assert env["SHARED"] == "secret-wins"  # app secrets override config env
    assert Path(seen["cwd"]) == REPO_ROOT
    assert seen["exe"] == sys.executable
    assert seen["machine_module"] is True  # `python -m functions.machine` resolves against the repo
    stopped = api.get(f"{MACHINES}/{machine['id']}").json()
    assert [e["type"] for e in stopped["events"]] == ["exit", "start", "launch"]
    assert exits(stopped)[0]["exit_code"] == 0


def test_exit_code_then_auto_destroy_keeps_the_machine_readable(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("import sys; sys.exit(3)", auto_destroy=True, restart={"policy": "no"}))
    waited = api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "destroyed", "timeout": 30})
    assert waited.status_code == 200

    gone = api.get(f"{MACHINES}/{machine['id']}").json()
    assert gone["state"] == "destroyed"
    (exit_event,) = exits(gone)
    assert exit_event["exit_code"] == 3
    assert exit_event["oom_killed"] is False and exit_event["requested_stop"] is False
    listed = [m["id"] for m in api.get(MACHINES).json()]
    assert machine["id"] not in listed
    assert machine["id"] in [m["id"] for m in api.get(MACHINES, params={"include_deleted": "true"}).json()]


def test_on_failure_restarts_up_to_max_retries(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("import sys; sys.exit(1)", restart={"policy": "on-failure", "max_retries": 2}))
    final = emu.wait_for_state(machine["id"], "stopped")
    events = exits(final)
    assert [e["restarting"] for e in events] == [False, True, True]
    assert all(e["exit_code"] == 1 for e in events)


def test_on_failure_does_not_restart_a_clean_exit(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("pass", restart={"policy": "on-failure"}))
    assert len(exits(emu.wait_for_state(machine["id"], "stopped"))) == 1


def test_always_restarts_until_stopped(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("pass", restart={"policy": "always"}))
    emu.wait_until(lambda ms: any(m["id"] == machine["id"] and len(exits(m)) >= 2 for m in ms))
    assert api.post(f"{MACHINES}/{machine['id']}/stop").status_code == 200
    final = emu.wait_for_state(machine["id"], "stopped")
    newest = exits(final)[0]
    # Either the stop ended a run (requested_stop) or it caught the machine between two runs.
    assert newest["requested_stop"] or newest["restarting"]
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "stopped"


def test_skip_launch_rests_in_created_until_started(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, {**py(SLEEP_FOREVER), "skip_launch": True})
    assert api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started", "timeout": 1}).status_code == 408
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "created"

    started = api.post(f"{MACHINES}/{machine['id']}/start")
    assert started.status_code == 200
    assert started.json() == {"previous_state": "created", "migrated": False, "new_host": ""}
    assert api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started"}).status_code == 200
    again = api.post(f"{MACHINES}/{machine['id']}/start")
    assert again.status_code == 412
    assert "error" in again.json()
    assert api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"}).status_code == 200


def test_stop_signals_the_process_and_records_a_requested_stop(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py(SLEEP_FOREVER, restart={"policy": "no"}))
    emu.wait_for_state(machine["id"], "started")
    response = api.post(f"{MACHINES}/{machine['id']}/stop", json={"signal": "SIGTERM", "timeout": "10s"})
    assert response.json() == {"ok": True}
    final = emu.wait_for_state(machine["id"], "stopped")
    (exit_event,) = exits(final)
    assert exit_event["requested_stop"] is True
    assert exit_event["exit_code"] == 128 + signal.SIGTERM


def test_stop_kills_a_process_that_ignores_the_signal_after_the_timeout(
    api: httpx.Client, emu: Emulator, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    ignore_term = (
        f"import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen({str(ready)!r}, 'w').close()\n"
        "while True: time.sleep(0.05)"
    )
    machine = create(api, py(ignore_term, restart={"policy": "no"}, auto_destroy=True))
    emu.wait_until(lambda _: ready.exists())  # `started` is not `ready` (reference 3.10)
    assert api.post(f"{MACHINES}/{machine['id']}/stop", json={"signal": "SIGTERM", "timeout": "1s"}).status_code == 200
    final = emu.wait_for_state(machine["id"], "destroyed")
    assert exits(final)[0]["exit_code"] == 137


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_stop_that_comes_while_the_process_is_starting_still_stops_it(
    api: httpx.Client, emu: Emulator, tmp_path: Path
) -> None:
    # A loaded host: the process runs (and says it is ready) before the emulator records it as
    # started. The stop must reach it, with its signal and its timeout, not be lost (the machine
    # came back `started` with a process nobody would stop: a flaky CI run, under load).
    emu.faults.spawn_lag_seconds = 1.0
    ready = tmp_path / "ready"
    ignore_term = (
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').write(str(os.getpid()))\nwhile True: time.sleep(0.05)"
    )
    machine = create(api, py(ignore_term, restart={"policy": "no"}, auto_destroy=True))
    emu.wait_until(lambda _: ready.exists() and ready.read_text() != "")
    assert api.post(f"{MACHINES}/{machine['id']}/stop", json={"signal": "SIGTERM", "timeout": "1s"}).status_code == 200
    final = emu.wait_for_state(machine["id"], "destroyed")
    assert exits(final)[0]["exit_code"] == 137  # SIGTERM ignored, killed after the timeout
    assert _gone(int(ready.read_text()))


def test_a_machine_destroyed_while_its_process_is_starting_leaves_no_process(
    api: httpx.Client, emu: Emulator, tmp_path: Path
) -> None:
    emu.faults.spawn_lag_seconds = 1.0
    ready = tmp_path / "ready"
    code = f"import os, time\nopen({str(ready)!r}, 'w').write(str(os.getpid()))\nwhile True: time.sleep(0.05)"
    machine = create(api, py(code))
    emu.wait_until(lambda _: ready.exists() and ready.read_text() != "")
    assert api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"}).json() == {"ok": True}
    assert _gone(int(ready.read_text()))
    time.sleep(1.5)  # past the lag: the machine stays destroyed
    after = emu.machine(machine["id"])
    assert after is not None and after["state"] == "destroyed"


def test_delete_needs_force_or_kill_while_running(api: httpx.Client, emu: Emulator) -> None:
    for param in ("force", "kill"):
        machine = create(api, py(SLEEP_FOREVER))
        emu.wait_for_state(machine["id"], "started")
        refused = api.delete(f"{MACHINES}/{machine['id']}")
        assert refused.status_code == 412
        assert api.delete(f"{MACHINES}/{machine['id']}", params={param: "true"}).json() == {"ok": True}
        assert emu.wait_for_state(machine["id"], "destroyed")["state"] == "destroyed"


def test_delete_of_a_stopped_machine_needs_no_force(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, {**py("pass"), "skip_launch": True})
    assert api.delete(f"{MACHINES}/{machine['id']}").status_code == 200
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "destroyed"
    assert api.delete(f"{MACHINES}/{machine['id']}").status_code == 404


def test_wait_times_out_with_408(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py(SLEEP_FOREVER))
    response = api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "stopped", "timeout": "1s"})
    assert response.status_code == 408
    api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def test_wait_accepts_repeated_and_comma_states(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, {**py("pass"), "skip_launch": True})
    path = f"{MACHINES}/{machine['id']}/wait"
    # `created` is not a state one can wait for
    assert api.get(path, params=[("state", "started"), ("state", "created")]).status_code == 400
    api.post(f"{MACHINES}/{machine['id']}/start")
    assert api.get(path, params=[("state", "destroyed"), ("state", "stopped")]).json()["state"] == "stopped"
    assert api.get(path, params={"state": "destroyed,stopped"}).json()["state"] == "stopped"


def test_waiting_for_started_on_an_exited_machine_fails(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("pass", restart={"policy": "no"}))
    emu.wait_for_state(machine["id"], "stopped")
    response = api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started"})
    assert response.status_code == 400
    assert "machine failed to reach desired state" in response.json()["error"]


def test_waiting_on_a_destroyed_machine_for_another_state_is_404(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("pass", restart={"policy": "no"}, auto_destroy=True))
    emu.wait_for_state(machine["id"], "destroyed")
    assert api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started"}).status_code == 404
    assert api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "destroyed"}).status_code == 200


def test_a_name_in_use_is_refused_but_a_made_up_name_never_is(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create naming a live machine's name is refused (422 name_taken); a name the API makes up
    is never refused, even when its first draw is taken (a suite of thousands of creates drew one
    once: 12 x 11 x 9,000 names)."""
    from infra.fly_emulator import wire

    body = {**py("pass"), "skip_launch": True}
    first = create(api, {**body, "name": "calm-lake-1234"})
    again = api.post(MACHINES, json={**body, "name": "calm-lake-1234"})
    assert again.status_code == 422
    assert again.json()["status"] == "name_taken"
    draws = iter(["calm-lake-1234", "calm-lake-1234", "bold-moon-5678"])
    monkeypatch.setattr(wire, "machine_name", lambda: next(draws))
    made_up = create(api, body)
    assert made_up["name"] == "bold-moon-5678"
    assert made_up["id"] != first["id"]


@pytest.mark.parametrize("name", [["calm-lake-1234"], {"a": 1}, 7], ids=["list", "object", "number"])
def test_a_name_that_is_not_text_is_refused(api: httpx.Client, name: object) -> None:
    """Refused as invalid, not a 500 (adversarial review: a list or an object crashed the lookup)."""
    reply = api.post(MACHINES, json={**py("pass"), "skip_launch": True, "name": name})
    assert reply.status_code == 422, reply.text


def test_destroyed_machines_are_forgotten_after_retention(tmp_path: Path) -> None:
    with (
        running_emulator(token=TOKEN, destroyed_retention_seconds=0) as emu,
        httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api,
    ):
        machine = create(api, {**py("pass"), "skip_launch": True})
        api.delete(f"{MACHINES}/{machine['id']}")
        assert api.get(f"{MACHINES}/{machine['id']}").status_code == 404


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 60.0), ("1", 1.0), ("60", 60.0), ("2s", 2.0), ("1m", 60.0), ("0", None), ("600", None), ("junk", None)],
)
def test_wait_timeout_outside_one_to_sixty_seconds_is_invalid(raw: str | None, seconds: float | None) -> None:
    assert wait_timeout(raw) == seconds


def test_durations_and_image_refs_parse_like_the_wire() -> None:
    assert parse_duration_seconds("1m30s", number_unit_seconds=1) == 90
    assert parse_duration_seconds(5_000_000_000, number_unit_seconds=1e-9) == 5
    assert parse_duration_seconds("10x", number_unit_seconds=1) is None
    assert image_ref("registry.fly.io/cp-worker:v1@sha256:abc") == {
        "registry": "registry.fly.io",
        "repository": "cp-worker",
        "tag": "v1",
        "digest": "sha256:abc",
        "labels": {},
    }
    assert image_ref("ubuntu")["repository"] == "library/ubuntu"


def test_list_filters_by_metadata_state_and_region(api: httpx.Client) -> None:
    run = os.urandom(4).hex()
    bodies = [
        {**py("pass", metadata={"run": run, "a": "1", "b": "2"}), "skip_launch": True, "region": "iad"},
        {**py("pass", metadata={"run": run, "a": "1", "b": "3"}), "skip_launch": True, "region": "ams"},
        {**py("pass", metadata={"run": run, "a": "2"}), "skip_launch": True, "region": "iad"},
    ]
    ids = [create(api, body)["id"] for body in bodies]

    def listed(**params: str) -> list[str]:
        return [m["id"] for m in api.get(MACHINES, params={"metadata.run": run, **params}).json()]

    assert sorted(listed()) == sorted(ids)
    assert listed(**{"metadata.a": "1", "metadata.b": "2"}) == [ids[0]]  # filters are ANDed
    assert sorted(listed(**{"metadata.a": "1"})) == sorted(ids[:2])
    assert listed(region="ams") == [ids[1]]
    assert sorted(listed(state="created,stopped")) == sorted(ids)
    assert listed(state="started") == []
    summary = api.get(MACHINES, params={"metadata.run": run, "summary": "true"}).json()
    assert summary and all("config" not in m and "events" not in m for m in summary)
    for machine_id in ids:
        api.delete(f"{MACHINES}/{machine_id}")


def test_leases_guard_mutations(api: httpx.Client) -> None:
    machine = create(api, {**py("pass"), "skip_launch": True})
    lease_path = f"{MACHINES}/{machine['id']}/lease"
    assert api.get(lease_path).json() == {"error": "lease not found"}

    taken = api.post(lease_path, json={"description": "test", "ttl": 60})
    assert taken.status_code == 201
    envelope = taken.json()
    assert envelope["status"] == "success"
    nonce = envelope["data"]["nonce"]
    assert envelope["data"]["expires_at"] > time.time()

    held = api.post(lease_path, json={"ttl": 60})
    assert held.status_code == 409
    assert "lease currently held by" in held.json()["error"]
    assert api.get(lease_path).json()["data"]["nonce"] == nonce
    assert api.post(f"{MACHINES}/{machine['id']}/start").status_code == 409
    assert api.post(f"{MACHINES}/{machine['id']}/start", headers={"fly-machine-lease-nonce": nonce}).status_code == 200
    assert api.delete(lease_path).status_code == 409
    released = api.delete(lease_path, headers={"fly-machine-lease-nonce": nonce})
    assert released.json() == {"status": "success", "data": {"ok": True}}
    assert api.get(lease_path).status_code == 404
    api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def test_create_with_lease_ttl_returns_the_nonce(api: httpx.Client) -> None:
    machine = create(api, {**py("pass"), "skip_launch": True, "lease_ttl": 30})
    assert machine["nonce"]
    assert api.delete(f"{MACHINES}/{machine['id']}").status_code == 409
    with_nonce = {"fly-machine-lease-nonce": machine["nonce"]}
    assert api.delete(f"{MACHINES}/{machine['id']}", headers=with_nonce).status_code == 200


def test_events_endpoint_lists_newest_first_with_a_limit(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py("pass", restart={"policy": "no"}))
    emu.wait_for_state(machine["id"], "stopped")
    events = api.get(f"{MACHINES}/{machine['id']}/events").json()
    assert [e["type"] for e in events] == ["exit", "start", "launch"]
    assert [e["type"] for e in api.get(f"{MACHINES}/{machine['id']}/events", params={"limit": 1}).json()] == ["exit"]


def test_fault_429_and_503_on_create_create_nothing(api: httpx.Client, emu: Emulator) -> None:
    before = len(emu.machines)
    emu.faults.fail_next_creates(429)
    emu.faults.fail_next_creates(503)
    limited = api.post(MACHINES, json=py("pass"))
    assert limited.status_code == 429 and limited.json() == {"error": "rate limit exceeded"}
    capacity = api.post(MACHINES, json=py("pass"))
    assert capacity.status_code == 503 and capacity.json()["status"] == "insufficient_capacity"
    assert len(emu.machines) == before
    assert api.post(MACHINES, json={**py("pass"), "skip_launch": True}).status_code == 200


def test_fault_408_still_creates_the_machine(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.create_but_time_out()
    tag = os.urandom(4).hex()
    response = api.post(MACHINES, json={**py("pass", metadata={"tag": tag}), "skip_launch": True})
    assert response.status_code == 408
    assert len(api.get(MACHINES, params={"metadata.tag": tag}).json()) == 1


def test_fault_never_boot_stays_starting_until_stopped(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.never_boot()
    machine = create(api, py("pass", auto_destroy=True, restart={"policy": "no"}))
    emu.wait_for_state(machine["id"], "starting")
    assert api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started", "timeout": 1}).status_code == 408
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "starting"
    assert api.post(f"{MACHINES}/{machine['id']}/stop").status_code == 200
    final = emu.wait_for_state(machine["id"], "destroyed")
    assert exits(final) == []


def test_fault_oom_kill_reports_oom_and_137(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.oom_kill()
    machine = create(api, py(SLEEP_FOREVER, restart={"policy": "no"}))
    (exit_event,) = exits(emu.wait_for_state(machine["id"], "stopped"))
    assert exit_event == {**exit_event, "exit_code": 137, "oom_killed": True, "requested_stop": False}


def test_boot_delay_still_boots(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.boot_delay_seconds = 0.3
    machine = create(api, py("pass", restart={"policy": "no"}))
    assert exits(emu.wait_for_state(machine["id"], "stopped"))[0]["exit_code"] == 0


def test_exit_hook_ends_a_process_with_the_given_outcome(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, py(SLEEP_FOREVER, restart={"policy": "no"}))
    emu.wait_for_state(machine["id"], "started")
    hooked = api.post(f"/_emu/machines/{machine['id']}/exit", json={"exit_code": 9, "oom_killed": True})
    assert hooked.status_code == 200
    (exit_event,) = exits(emu.wait_for_state(machine["id"], "stopped"))
    assert (exit_event["exit_code"], exit_event["oom_killed"]) == (9, True)


def test_faults_can_be_injected_over_http(api: httpx.Client) -> None:
    assert api.post("/_emu/faults", json={"create_statuses": [503]}).status_code == 200
    assert api.post(MACHINES, json=py("pass")).status_code == 503


def test_requests_are_recorded_for_assertions(api: httpx.Client, emu: Emulator) -> None:
    tag = os.urandom(4).hex()
    api.post(MACHINES, json={**py("pass", metadata={"tag": tag}), "skip_launch": True})
    (recorded,) = [
        r
        for r in emu.requests_to("POST", "/machines")
        if (r.json or {}).get("config", {}).get("metadata") == {"tag": tag}
    ]
    assert recorded.status == 200
    assert recorded.headers["authorization"] == f"FlyV1 {TOKEN}"


def test_leaving_the_harness_kills_machine_processes(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with (
        running_emulator(token=TOKEN) as emu,
        httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api,
    ):
        script = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nwhile True: time.sleep(0.05)"
        machine = create(api, py(script))
        emu.wait_for_state(machine["id"], "started")
        emu.wait_until(lambda _: pid_file.exists() and pid_file.read_text() != "")
        pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cli_serves_on_the_given_port(tmp_path: Path) -> None:
    port = free_port()
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# worker secrets\nDATABASE_URL=postgresql://example/db\n")
    command = ["-m", "infra.fly_emulator", "--port", str(port), "--token", TOKEN, "--secrets-file", str(secrets)]
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}{MACHINES}", headers={"Authorization": f"Bearer {TOKEN}"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        assert response.status_code == 200
        assert response.json() == []
    finally:
        process.terminate()
        process.wait(30)
