"""The emulator's bad-day switches (infra/fly_emulator/faults.py), each as Fly really behaves, over HTTP."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.fly_emulator import Emulator, running_emulator
from infra.fly_emulator.faults import RESET, Chaos

TOKEN = "fm2_bad-day-token"
APP = "cp-worker"
MACHINES = f"/v1/apps/{APP}/machines"
SLEEP_FOREVER = "import time\nwhile True: time.sleep(0.05)"


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with running_emulator(token=TOKEN, apps=[APP]) as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Iterator[httpx.Client]:
    emu.faults.clear()
    emu.limiter.reset()
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}, timeout=90) as client:
        yield client
    emu.faults.clear()
    emu.limiter.reset()


def py(code: str, **config: Any) -> dict[str, Any]:
    return {"config": {"image": "registry.fly.io/cp-worker:test", "init": {"cmd": ["python", "-c", code]}, **config}}


def tagged(code: str = "pass", **config: Any) -> tuple[str, dict[str, Any]]:
    tag = os.urandom(4).hex()
    return tag, py(code, metadata={"tag": tag}, **config)


def create(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(MACHINES, json=body)
    assert response.status_code == 200, response.text
    machine: dict[str, Any] = response.json()
    return machine


def listed(api: httpx.Client, tag: str) -> list[dict[str, Any]]:
    machines: list[dict[str, Any]] = api.get(MACHINES, params={"metadata.tag": tag}).json()
    return machines


def eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_any_call_can_fail_not_only_create(api: httpx.Client, emu: Emulator) -> None:
    machine = create(api, {**py("pass"), "skip_launch": True})
    emu.faults.fail_next("get", 503)
    emu.faults.fail_next("list", 500)
    emu.faults.fail_next("wait", 502)
    emu.faults.fail_next("start", 504)
    emu.faults.fail_next("delete", 429)
    assert api.get(f"{MACHINES}/{machine['id']}").status_code == 503
    assert api.get(MACHINES).status_code == 500
    assert api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started", "timeout": 1}).status_code == 502
    assert api.post(f"{MACHINES}/{machine['id']}/start").status_code == 504
    assert api.delete(f"{MACHINES}/{machine['id']}").status_code == 429
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "created"  # nothing acted


def test_a_connection_reset_gives_no_answer_and_may_follow_the_action(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.fail_next("get", RESET)
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(f"{MACHINES}/0123456789abcd")
    tag, body = tagged()
    emu.faults.fail_next("create", RESET, acted=True)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(MACHINES, json={**body, "skip_launch": True})
    assert len(listed(api, tag)) == 1  # the reset hid a create that happened
    assert [r.status for r in emu.requests_to("GET", "/0123456789abcd")][-1] == 0


def test_a_just_created_machine_is_invisible_for_a_while(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.invisible_seconds = 1.0
    tag, body = tagged(SLEEP_FOREVER)
    machine = create(api, body)
    path = f"{MACHINES}/{machine['id']}"
    assert api.get(path).status_code == 404
    assert api.get(f"{path}/wait", params={"state": "started", "timeout": 1}).status_code == 404
    assert api.post(f"{path}/stop").status_code == 404
    assert listed(api, tag) == []
    eventually(lambda: api.get(path).status_code == 200)
    assert [m["id"] for m in listed(api, tag)] == [machine["id"]]
    assert api.delete(path, params={"force": "true"}).status_code == 200


def test_list_lags_behind_a_destroy(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.list_lag_seconds = 1.0
    tag, body = tagged(SLEEP_FOREVER)
    machine = create(api, body)
    emu.wait_for_state(machine["id"], "started")
    assert api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"}).status_code == 200
    emu.wait_for_state(machine["id"], "destroyed")
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "destroyed"
    assert [m["state"] for m in listed(api, tag)] == ["started"]  # list has not caught up
    eventually(lambda: listed(api, tag) == [])


def test_image_pull_keeps_a_machine_created_and_start_or_stop_meet_412(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.image_pull_seconds = 1.0
    booting = create(api, py(SLEEP_FOREVER))
    pooled = create(api, {**py(SLEEP_FOREVER), "skip_launch": True})
    assert api.get(f"{MACHINES}/{booting['id']}").json()["state"] == "created"
    stop = api.post(f"{MACHINES}/{booting['id']}/stop")
    assert stop.status_code == 412 and "current state: 'created'" in stop.json()["error"]
    start = api.post(f"{MACHINES}/{pooled['id']}/start")
    assert start.status_code == 412 and "unable to start machine" in start.json()["error"]
    emu.wait_for_state(booting["id"], "started")  # it boots once the image is ready
    eventually(lambda: api.post(f"{MACHINES}/{pooled['id']}/start").status_code == 200)
    emu.wait_for_state(pooled["id"], "started")
    for machine in (booting, pooled):
        api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def test_a_failed_launch_stays_failed_and_launch_failed_goes_to_destroyed(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.fail_launch("failed")
    failed = create(api, py("pass", auto_destroy=True, restart={"policy": "no"}))
    view = emu.wait_for_state(failed["id"], "failed")
    assert [e for e in view["events"] if e["type"] == "exit"] == []  # it never ran
    time.sleep(0.3)
    assert api.get(f"{MACHINES}/{failed['id']}").json()["state"] == "failed"  # Fly left it behind
    assert api.delete(f"{MACHINES}/{failed['id']}").status_code == 200
    emu.faults.fail_launch("launch_failed")
    doomed = create(api, py("pass"))
    emu.wait_for_state(doomed["id"], "launch_failed")
    emu.wait_for_state(doomed["id"], "destroyed")


def test_an_unreachable_host_gives_an_incomplete_config(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.unreachable_host()
    tag, body = tagged(SLEEP_FOREVER)
    machine = create(api, body)
    for view in (api.get(f"{MACHINES}/{machine['id']}").json(), listed(api, tag)[0]):
        assert view["host_status"] == "unreachable"
        assert "config" not in view
        assert view["incomplete_config"]["metadata"] == {"tag": tag}
    api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def test_a_state_the_client_does_not_know_can_be_reported(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.masked_state = ("pending", 1.0)
    tag, body = tagged(SLEEP_FOREVER)
    machine = create(api, body)
    assert api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "pending"
    assert listed(api, tag)[0]["state"] == "pending"
    eventually(lambda: api.get(f"{MACHINES}/{machine['id']}").json()["state"] == "started")
    api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def test_the_rate_limiter_answers_429_per_action_and_identifier(api: httpx.Client, emu: Emulator) -> None:
    one = create(api, {**py("pass"), "skip_launch": True})
    two = create(api, {**py("pass"), "skip_launch": True})
    since = time.monotonic()
    emu.limiter.clock = lambda: since  # no refill between requests, however slowly they go out
    emu.limiter.enabled = True
    gets = [api.get(f"{MACHINES}/{one['id']}").status_code for _ in range(11)]
    assert gets[:10] == [200] * 10 and gets[10] == 429  # get: 5/s, burst 10
    assert api.get(f"{MACHINES}/{two['id']}").status_code == 200  # another machine, another bucket
    lists = [api.get(MACHINES).status_code for _ in range(4)]
    assert lists == [200, 200, 200, 429]  # everything else: 1/s, burst 3
    assert api.get(MACHINES).status_code == 429
    assert api.get(f"{MACHINES}/{one['id']}/events").status_code == 200  # events is its own action
    assert api.get(MACHINES).json() == {"error": "rate limit exceeded"}
    assert emu.limiter.rejected["get"] == 1 and emu.limiter.rejected["list"] == 3
    report = emu.rate_report(since)
    assert report["get"].busiest_second == 11 and report["get"].over_limit == 1
    assert report["list"].calls == 6 and report["list"].over_limit == 3


def test_capacity_and_quota_per_region_and_a_region_list_falls_through(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.region_full("iad")
    emu.faults.quota_exceeded("ord")
    full = api.post(MACHINES, json={**py("pass"), "region": "iad", "skip_launch": True})
    assert full.status_code == 503 and full.json()["status"] == "insufficient_capacity"
    quota = api.post(MACHINES, json={**py("pass"), "region": "ord", "skip_launch": True})
    assert quota.status_code == 403 and "over the allowed quota" in quota.json()["error"]
    placed = create(api, {**py("pass"), "region": "iad,ord,ewr", "skip_launch": True})
    assert placed["region"] == "ewr"
    emu.faults.region_full("iad", False)
    assert create(api, {**py("pass"), "region": "iad", "skip_launch": True})["region"] == "iad"


@pytest.mark.parametrize("timeout", ["0", "61", "600", "10m", "soon"])
def test_wait_timeouts_outside_one_to_sixty_seconds_are_400(api: httpx.Client, timeout: str) -> None:
    machine = create(api, {**py("pass"), "skip_launch": True})
    answer = api.get(f"{MACHINES}/{machine['id']}/wait", params={"state": "started", "timeout": timeout})
    assert answer.status_code == 400 and "invalid_argument" in answer.json()["error"]


@pytest.mark.parametrize(
    ("guest", "reason"),
    [
        ({"cpu_kind": "burst", "cpus": 1, "memory_mb": 256}, "invalid CPU kind"),
        ({"cpu_kind": "shared", "cpus": 3, "memory_mb": 768}, "invalid number of CPUs"),
        ({"cpu_kind": "shared", "cpus": 1, "memory_mb": 300}, "invalid memory size"),
        ({"cpu_kind": "performance", "cpus": 1, "memory_mb": 1024}, "too low"),
        ({"cpu_kind": "shared", "cpus": 1, "memory_mb": 4096}, "too high"),
    ],
)
def test_guest_sizes_are_validated_like_flyctl(api: httpx.Client, guest: dict[str, Any], reason: str) -> None:
    answer = api.post(MACHINES, json=py("pass", guest=guest))
    assert answer.status_code == 422 and reason in answer.json()["error"]


def test_a_revoked_token_is_401_on_every_call_until_restored(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.fail_auth(401)
    assert api.get(MACHINES).status_code == 401
    assert api.post(MACHINES, json=py("pass")).status_code == 401
    assert api.post("/_emu/faults", json={"auth_status": None}).status_code == 200  # test hooks still work
    assert api.get(MACHINES).status_code == 200
    emu.faults.fail_auth(403)
    assert api.get(MACHINES).status_code == 403


def test_chaos_injects_faults_at_random_and_counts_them(api: httpx.Client, emu: Emulator) -> None:
    emu.faults.set_chaos(Chaos(seed=7, call_5xx=0.5, call_reset=0.25))
    statuses = []
    for _ in range(60):
        try:
            statuses.append(api.get(MACHINES).status_code)
        except httpx.RemoteProtocolError:
            statuses.append(RESET)
    assert {200, RESET} <= set(statuses) and any(s >= 500 for s in statuses)
    assert emu.faults.injected["5xx"] == sum(s >= 500 for s in statuses)
    assert emu.faults.injected["reset"] == statuses.count(RESET)
