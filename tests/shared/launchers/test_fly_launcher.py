"""FlyLauncher against the Machines API emulator over real HTTP on loopback (fly_support.py
describes the fake worker image its machines run)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from functions.registry import load_registry, machine_program
from infra.fly_emulator import Emulator, running_emulator
from infra.local.postgres import free_port
from shared.errors import LauncherRejected, LauncherUnavailable
from shared.launchers import make_launcher
from shared.launchers.fly import FlyLauncher
from shared.launchers.fly_config import META_LAUNCH_ID, META_POOL, STOP_TIMEOUT_SECONDS

from .fly_support import (
    FAST,
    IMAGE,
    MACHINES,
    TOKEN,
    WORKER_SECRETS,
    creates_for,
    fake_image_emulator,
    fly_settings,
    meta,
    spec,
    wait_state,
)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with fake_image_emulator(tmp_path_factory.mktemp("fake-image")) as emulator:
        yield emulator


@pytest.fixture
async def launcher(emu: Emulator) -> AsyncIterator[FlyLauncher]:
    emu.faults.clear()
    fly = FlyLauncher(fly_settings(emu), retry=FAST, program=machine_program())
    try:
        yield fly
    finally:
        await fly.aclose()


@pytest.mark.parametrize("queue", ["images", "documents", "exports", "webhooks", "emails", "default"])
async def test_create_request_carries_the_machine_contract(emu: Emulator, launcher: FlyLauncher, queue: str) -> None:
    ref = await launcher.launch(spec(queue, FAKE_MACHINE="exit:0"))
    (create,) = creates_for(emu, ref.id)
    body = create.json
    config = body["config"]
    assert body["region"] == "iad"
    assert "skip_launch" not in body
    assert config["image"] == IMAGE
    assert config["init"] == {"cmd": list(machine_program().command)}
    assert config["env"] == spec(queue, FAKE_MACHINE="exit:0").env
    assert config["guest"] == {
        "cpu_kind": load_registry().guest(queue).cpu_kind,
        "cpus": load_registry().guest(queue).cpus,
        "memory_mb": load_registry().guest(queue).memory_mb,
    }
    assert config["auto_destroy"] is True
    assert config["restart"] == {"policy": "no"}
    assert config["stop_config"] == {"signal": "SIGTERM", "timeout": f"{STOP_TIMEOUT_SECONDS}s"}
    metadata = config["metadata"]
    assert metadata["cp_role"] == "function-machine"
    assert metadata["cp_queue"] == queue
    assert metadata["cp_job_id"] == "42"
    assert len(metadata[META_LAUNCH_ID]) == 32
    assert create.headers["authorization"] == f"FlyV1 {TOKEN}"  # macaroon tokens use the FlyV1 scheme


async def test_heavy_queues_get_more_cpu_and_memory_than_light_ones() -> None:
    for heavy in ("images", "documents", "exports"):
        for light in ("webhooks", "emails", "default"):
            assert load_registry().guest(heavy).cpus > load_registry().guest(light).cpus
            assert load_registry().guest(heavy).memory_mb > load_registry().guest(light).memory_mb


async def test_secrets_stay_out_of_the_config_and_come_from_worker_secrets(
    emu: Emulator, launcher: FlyLauncher, tmp_path: Path
) -> None:
    out = tmp_path / "env.json"
    leaky = spec(
        "emails",
        FAKE_MACHINE="exit:0",
        FAKE_MACHINE_OUT=str(out),
        DATABASE_URL="postgresql://leaked/db",
        AWS_SECRET_ACCESS_KEY="leaked",
        SMTP_PASSWORD="leaked",
    )
    ref = await launcher.launch(leaky)
    (create,) = creates_for(emu, ref.id)
    assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "SMTP_PASSWORD"} & set(create.json["config"]["env"])
    await wait_state(emu, ref.id, "destroyed")
    seen = json.loads(out.read_text())
    assert seen["DATABASE_URL"] == WORKER_SECRETS["DATABASE_URL"]
    assert seen["FLY_MACHINE_ID"] == ref.id
    assert seen["JOB_ID"] == "42" and seen["JOB_QUEUE"] == "emails"


async def test_plain_tokens_use_the_bearer_scheme(emu: Emulator) -> None:
    with running_emulator(token="plain-token") as plain:
        fly = FlyLauncher(fly_settings(plain, fly_api_token="plain-token"), retry=FAST, program=machine_program())
        try:
            await fly.list_machines()
        finally:
            await fly.aclose()
        assert plain.requests[-1].headers["authorization"] == "Bearer plain-token"


async def test_429_and_503_on_create_are_retried(emu: Emulator, launcher: FlyLauncher) -> None:
    emu.faults.fail_next_creates(429)
    emu.faults.fail_next_creates(503)
    ref = await launcher.launch(spec(FAKE_MACHINE="exit:0"))
    assert [r.status for r in creates_for(emu, ref.id)] == [429, 503, 200]
    launch_id = creates_for(emu, ref.id)[0].json["config"]["metadata"][META_LAUNCH_ID]
    assert [m["id"] for m in emu.machines if meta(m).get(META_LAUNCH_ID) == launch_id] == [ref.id]


async def test_capacity_answers_on_create_are_retried(emu: Emulator, launcher: FlyLauncher) -> None:
    emu.faults.fail_next_creates(412)
    ref = await launcher.launch(spec(FAKE_MACHINE="exit:0"))
    assert [r.status for r in creates_for(emu, ref.id)] == [412, 200]


async def test_create_gives_up_as_unavailable_when_tries_run_out(emu: Emulator, launcher: FlyLauncher) -> None:
    before = len(emu.machines)
    emu.faults.fail_next_creates(503, times=FAST.attempts)
    with pytest.raises(LauncherUnavailable, match="503"):
        await launcher.launch(spec(FAKE_MACHINE="exit:0"))
    assert len(emu.machines) == before


async def test_408_that_created_the_machine_creates_no_second_one(emu: Emulator, launcher: FlyLauncher) -> None:
    emu.faults.create_but_time_out()
    # A machine that stays up: one that exits at once may be destroyed (and so missing from the
    # list, as on Fly) before a slow host's lookup, and that case is not what this test is about.
    ref = await launcher.launch(spec(FAKE_MACHINE="sleep"))
    try:
        creates = creates_for(emu, ref.id)
        assert [r.status for r in creates] == [408]
        launch_id = creates[0].json["config"]["metadata"][META_LAUNCH_ID]
        lookups = [r for r in emu.requests_to("GET", MACHINES) if r.param(f"metadata.{META_LAUNCH_ID}") == launch_id]
        assert len(lookups) == 1
        assert [m["id"] for m in emu.machines if meta(m).get(META_LAUNCH_ID) == launch_id] == [ref.id]
    finally:
        await launcher.stop(ref.id)


async def test_408_on_every_try_looks_up_before_each_retry_then_gives_up(emu: Emulator, launcher: FlyLauncher) -> None:
    emu.faults.fail_next_creates(408, times=FAST.attempts)
    with pytest.raises(LauncherUnavailable, match="408"):
        await launcher.launch(spec(FAKE_MACHINE="exit:0"))
    launch_id = emu.requests_to("POST", MACHINES)[-1].json["config"]["metadata"][META_LAUNCH_ID]
    posts = [r for r in emu.requests_to("POST", MACHINES) if meta(r.json).get(META_LAUNCH_ID) == launch_id]
    lookups = [r for r in emu.requests_to("GET", MACHINES) if r.param(f"metadata.{META_LAUNCH_ID}") == launch_id]
    assert [r.status for r in posts] == [408] * FAST.attempts
    assert len(lookups) == FAST.attempts  # before each retry, and once more after the last try


async def test_wrong_token_is_rejected(emu: Emulator) -> None:
    fly = FlyLauncher(fly_settings(emu, fly_api_token="fm2_wrong"), retry=FAST, program=machine_program())
    try:
        with pytest.raises(LauncherRejected, match="401"):
            await fly.launch(spec())
    finally:
        await fly.aclose()


async def test_unknown_worker_app_is_rejected(emu: Emulator) -> None:
    fly = FlyLauncher(fly_settings(emu, fly_worker_app="no-such-app"), retry=FAST, program=machine_program())
    try:
        with pytest.raises(LauncherRejected, match="404"):
            await fly.launch(spec())
    finally:
        await fly.aclose()


async def test_unreachable_api_is_unavailable(emu: Emulator) -> None:
    fly = FlyLauncher(
        fly_settings(emu, fly_api_hostname=f"http://127.0.0.1:{free_port()}"), retry=FAST, program=machine_program()
    )
    try:
        with pytest.raises(LauncherUnavailable, match="cannot reach"):
            await fly.launch(spec())
        with pytest.raises(LauncherUnavailable):
            await fly.status("0123456789abcd")
    finally:
        await fly.aclose()


async def test_non_zero_exit_is_reported_by_status(emu: Emulator, launcher: FlyLauncher) -> None:
    ref = await launcher.launch(spec("documents", FAKE_MACHINE="exit:3"))
    await wait_state(emu, ref.id, "destroyed")
    status = await launcher.status(ref.id)
    assert (status.state, status.exit_code, status.oom_killed, status.queue) == ("exited", 3, False, "documents")


async def test_oom_kill_is_reported_by_status(emu: Emulator, launcher: FlyLauncher) -> None:
    emu.faults.oom_kill()
    ref = await launcher.launch(spec(FAKE_MACHINE="sleep"))
    await wait_state(emu, ref.id, "destroyed")
    status = await launcher.status(ref.id)
    assert (status.state, status.exit_code, status.oom_killed) == ("exited", 137, True)


async def test_stop_ends_a_running_machine_gracefully(emu: Emulator, launcher: FlyLauncher, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ref = await launcher.launch(spec(FAKE_MACHINE="sleep", FAKE_MACHINE_READY=str(ready)))
    await asyncio.to_thread(emu.wait_until, lambda _: ready.exists())
    assert (await launcher.status(ref.id)).state == "running"
    await launcher.stop(ref.id)
    (stop,) = emu.requests_to("POST", f"{ref.id}/stop")
    assert stop.json == {"signal": "SIGTERM", "timeout": f"{STOP_TIMEOUT_SECONDS}s"}
    await wait_state(emu, ref.id, "destroyed")
    status = await launcher.status(ref.id)
    assert (status.state, status.exit_code) == ("exited", 0)


async def test_stop_and_status_of_an_unknown_machine(launcher: FlyLauncher) -> None:
    await launcher.stop("0123456789abcd")
    status = await launcher.status("0123456789abcd")  # one 404 is no proof (test_fly_bad_day.py)
    assert (status.state, status.queue, status.exit_code) == ("launching", None, None)


async def test_a_machine_that_never_boots_is_launching_until_stopped(emu: Emulator, launcher: FlyLauncher) -> None:
    emu.faults.never_boot()
    ref = await launcher.launch(spec(FAKE_MACHINE="exit:0"))
    await wait_state(emu, ref.id, "starting")
    assert (await launcher.status(ref.id)).state == "launching"
    await launcher.stop(ref.id)
    await wait_state(emu, ref.id, "destroyed")
    status = await launcher.status(ref.id)
    assert (status.state, status.exit_code) == ("failed", None)  # it ended without ever running


async def test_list_machines_reconciles_our_machines_only(emu: Emulator, launcher: FlyLauncher) -> None:
    emails = await launcher.launch(spec("emails", FAKE_MACHINE="sleep"))
    webhooks = await launcher.launch(spec("webhooks", FAKE_MACHINE="sleep"))
    async with httpx.AsyncClient(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}) as api:
        foreign = (await api.post(MACHINES, json={"config": {"image": IMAGE}, "skip_launch": True})).json()
    await wait_state(emu, emails.id, "started")
    await wait_state(emu, webhooks.id, "started")

    listed = {s.id: s for s in await launcher.list_machines()}
    assert {emails.id, webhooks.id} <= set(listed)
    assert foreign["id"] not in listed
    assert (listed[emails.id].queue, listed[emails.id].state) == ("emails", "running")
    assert [s.id for s in await launcher.list_machines(queue="webhooks") if s.id in (emails.id, webhooks.id)] == [
        webhooks.id
    ]

    await launcher.stop(emails.id)
    await wait_state(emu, emails.id, "destroyed")
    deadline = asyncio.get_running_loop().time() + 10  # the shared listing is up to 2 s old
    while emails.id in {s.id for s in await launcher.list_machines()}:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    await launcher.stop(webhooks.id)
    await wait_state(emu, webhooks.id, "destroyed")


async def test_make_launcher_builds_the_fly_launcher(emu: Emulator) -> None:
    fly = make_launcher(fly_settings(emu), machine_program())
    try:
        assert isinstance(fly, FlyLauncher) and fly.kind == "fly"
        assert "token" not in repr(fly).lower()
    finally:
        await fly.aclose()


async def test_missing_fly_settings_are_rejected(emu: Emulator) -> None:
    with pytest.raises(LauncherRejected, match="FLY_API_TOKEN"):
        FlyLauncher(fly_settings(emu, launcher="local", fly_api_token=None), program=machine_program())
    with pytest.raises(LauncherRejected, match="WORKER_IMAGE"):
        FlyLauncher(fly_settings(emu, launcher="local", worker_image=None), program=machine_program())


async def test_warm_pool_starts_stopped_machines_instead_of_creating(emu: Emulator) -> None:
    emu.faults.clear()
    queue = "exports"

    def pool_machines(state: str | None = None) -> list[dict[str, Any]]:
        return [
            m
            for m in emu.machines
            if meta(m).get(META_POOL) == "warm"
            and meta(m).get("cp_queue") == queue
            and m["state"] != "destroyed"
            and (state is None or m["state"] == state)
        ]

    fly = FlyLauncher(fly_settings(emu, warm_pool_size=1), retry=FAST, program=machine_program())
    try:
        # No idle machine yet: this launch creates one on demand and fills the pool meanwhile.
        first = await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
        assert creates_for(emu, first.id)[0].json["config"]["auto_destroy"] is True
        await fly.pool_filled()
        assert len(pool_machines("created")) == 1
        (pooled,) = pool_machines()
        pool_create = creates_for(emu, pooled["id"])[0].json
        assert pool_create["skip_launch"] is True
        assert pool_create["config"]["auto_destroy"] is False
        assert pool_create["config"]["restart"] == {"policy": "no"}
        assert "JOB_ID" not in pool_create["config"]["env"]  # start has no body: the job cannot be passed
        assert pool_id_not_listed(await fly.list_machines(queue=queue), pooled["id"])

        # Next launches start the pooled machine; it returns to `stopped` after each run.
        creates_before = len(emu.requests_to("POST", MACHINES))
        second = await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
        assert second.id == pooled["id"]
        await wait_state(emu, second.id, "stopped")
        third = await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
        assert third.id == pooled["id"]
        await wait_state(emu, third.id, "stopped")
        assert len(emu.requests_to("POST", MACHINES)) == creates_before
        assert len(emu.requests_to("POST", f"{pooled['id']}/start")) == 2
        assert (await fly.status(pooled["id"])).exit_code == 0

        # A new image retires the idle pool machine and builds a fresh one.
        await fly.aclose()
        fly = FlyLauncher(
            fly_settings(emu, warm_pool_size=1, worker_image=IMAGE + "-2"), retry=FAST, program=machine_program()
        )
        await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
        await wait_state(emu, pooled["id"], "destroyed")
        await asyncio.to_thread(emu.wait_until, lambda _: len(pool_machines("created")) == 1)
        (fresh,) = pool_machines()
        assert fresh["config"]["image"] == IMAGE + "-2"
    finally:
        await fly.aclose()
        async with httpx.AsyncClient(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}) as api:
            for machine in pool_machines():
                await api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def pool_id_not_listed(statuses: list[Any], machine_id: str) -> bool:
    return machine_id not in {s.id for s in statuses}
