"""FlyLauncher against Fly on a bad day (issue 10): each finding against an emulator switch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from functions.registry import machine_program
from infra.fly_emulator import Emulator
from shared import telemetry
from shared.errors import LauncherRejected, LauncherUnavailable
from shared.launchers.fly import FlyLauncher
from shared.launchers.fly_config import META_LAUNCH_ID, META_POOL, META_QUEUE, META_ROLE, ROLE_FUNCTION
from shared.settings import Settings

from .fly_support import FAST, IMAGE, MACHINES, TOKEN, creates_for, fake_image_emulator, fly_settings, spec, wait_state

UNKNOWN_ID = "0123456789abcd"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with fake_image_emulator(tmp_path_factory.mktemp("fake-image")) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def calm(emu: Emulator) -> Iterator[None]:
    emu.faults.clear()
    emu.limiter.reset()
    yield
    emu.faults.clear()
    emu.limiter.reset()


@pytest.fixture
async def launchers(emu: Emulator) -> AsyncIterator[list[FlyLauncher]]:
    """FlyLaunchers made by a test (`launcher_for`), closed after it, their machines destroyed."""
    made: list[FlyLauncher] = []
    yield made
    for fly in made:
        await fly.aclose()
    async with httpx.AsyncClient(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}) as api:
        for machine in emu.not_destroyed():
            await api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


def launcher_for(made: list[FlyLauncher], emu: Emulator, **overrides: Any) -> FlyLauncher:
    fly = FlyLauncher(fly_settings(emu, **overrides), retry=FAST, program=machine_program())
    made.append(fly)
    return fly


async def eventually(what: str, predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


# -- never trust one answer ------------------------------------------------------------------


async def test_a_machine_fly_cannot_see_yet_is_launching_not_gone(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    # Invisible until the test reveals it (1.5 s of invisibility made this flaky on a loaded box:
    # the launch itself outlasted it, and the first read saw the machine running).
    emu.faults.invisible_seconds = 300.0
    fly = launcher_for(launchers, emu, fly_gone_confirm_seconds=0.2)
    ref = await fly.launch(spec(FAKE_MACHINE="sleep"))
    for _ in range(3):  # 404s further apart than the confirmation window, but within the boot grace
        assert (await fly.status(ref.id)).state == "launching"
        await asyncio.sleep(0.3)
    emu.reveal(ref.id)

    async def running() -> bool:
        return (await fly.status(ref.id)).state == "running"

    await eventually("the machine to show up running", running)


async def test_a_machine_is_gone_only_after_404s_two_reads_apart(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    fly = launcher_for(launchers, emu, fly_gone_confirm_seconds=0.5)
    assert (await fly.status(UNKNOWN_ID)).state == "launching"  # one 404 proves nothing
    assert (await fly.status(UNKNOWN_ID)).state == "launching"  # nor two in a row
    await asyncio.sleep(0.6)
    status = await fly.status(UNKNOWN_ID)
    assert (status.state, status.exit_code, status.queue) == ("exited", None, None)


async def test_a_sighting_in_between_resets_the_evidence(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    # Invisible until the test reveals it: a clock the test does not control made this flaky on a
    # loaded box (the launch itself outlasted a 0.6 s invisibility, so the first read saw it).
    emu.faults.invisible_seconds = 300.0
    fly = launcher_for(launchers, emu, fly_gone_confirm_seconds=0.4, machine_boot_grace_seconds=0.1)
    ref = await fly.launch(spec(FAKE_MACHINE="sleep"))
    try:
        await asyncio.sleep(0.15)  # past the boot grace: only the two-reads rule protects it now
        assert (await fly.status(ref.id)).state == "launching"  # the first 404
        emu.reveal(ref.id)
        assert (await fly.status(ref.id)).state in ("launching", "running")  # seen: not gone
        emu.hide(ref.id)
        await asyncio.sleep(0.6)  # past the confirm window counted from the first 404
        # A 404 again: had the sighting not reset the evidence, 404s would now span 0.75 s.
        assert (await fly.status(ref.id)).state in ("launching", "running")
    finally:
        emu.reveal(ref.id)  # the module's emulator must be able to stop and destroy it


async def test_a_state_we_do_not_know_is_launching_not_failed(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    emu.faults.masked_state = ("pending", 30.0)
    fly = launcher_for(launchers, emu)
    ref = await fly.launch(spec("emails", FAKE_MACHINE="sleep"))
    assert (await fly.status(ref.id)).state == "launching"
    listed = {s.id: s for s in await fly.list_machines()}
    assert listed[ref.id].state == "launching" and not listed[ref.id].leftover


async def test_an_unreachable_host_still_says_whose_machine_it_is(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    emu.faults.unreachable_host()
    fly = launcher_for(launchers, emu)
    ref = await fly.launch(spec("webhooks", FAKE_MACHINE="sleep"))
    await wait_state(emu, ref.id, "started")
    listed = {s.id: s for s in await fly.list_machines(queue="webhooks")}
    assert (listed[ref.id].queue, listed[ref.id].state) == ("webhooks", "running")
    assert (await fly.status(ref.id)).queue == "webhooks"


# -- pace the calls, and let one list replace many gets --------------------------------------


async def test_calls_are_paced_within_flys_limits_per_action(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    fly = launcher_for(launchers, emu)
    ref = await fly.launch(spec(FAKE_MACHINE="sleep"))
    emu.limiter.enabled = True
    since = time.monotonic()
    gets = [fly.status(ref.id) for _ in range(16)]
    creates = [fly.launch(spec(FAKE_MACHINE="exit:0")) for _ in range(4)]
    lists = [fly.list_machines() for _ in range(4)]
    await asyncio.gather(*gets, *creates, *lists)
    report = emu.rate_report(since)
    assert (report["get"].calls, report["create"].calls) == (16, 4)
    assert report["list"].calls == 1  # one shared listing serves every reader for a moment
    assert {action: rate.over_limit for action, rate in report.items()} == {"get": 0, "create": 0, "list": 0}
    assert sum(emu.limiter.rejected.values()) == 0


# -- placement: a region list, capacity and quota --------------------------------------------


async def test_create_falls_back_through_the_region_list_on_capacity(
    emu: Emulator, launchers: list[FlyLauncher]
) -> None:
    emu.faults.region_full("iad")
    fly = launcher_for(launchers, emu, fly_regions=["iad", "ewr"])
    ref = await fly.launch(spec(FAKE_MACHINE="exit:0"))
    assert ref.detail["region"] == "ewr"
    assert [(r.json["region"], r.status) for r in creates_for(emu, ref.id)] == [("iad", 503), ("ewr", 200)]
    launch_id = creates_for(emu, ref.id)[0].json["config"]["metadata"][META_LAUNCH_ID]
    lookups = [r for r in emu.requests_to("GET", MACHINES) if r.param(f"metadata.{META_LAUNCH_ID}") == launch_id]
    assert lookups == []  # insufficient_capacity is a clear "no": nothing was created to look for


async def test_a_quota_403_moves_on_and_is_not_permanent(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    emu.faults.quota_exceeded("iad")
    fly = launcher_for(launchers, emu, fly_regions=["iad", "ewr"])
    assert (await fly.launch(spec(FAKE_MACHINE="exit:0"))).detail["region"] == "ewr"
    emu.faults.quota_exceeded("ewr")
    with pytest.raises(LauncherUnavailable, match="quota"):  # try later, not "never"
        await fly.launch(spec(FAKE_MACHINE="exit:0"))
    emu.faults.quota_exceeded("iad", False)
    assert (await fly.launch(spec(FAKE_MACHINE="exit:0"))).detail["region"] == "iad"
    assert fly.alerts() == []  # a quota answer is about capacity, not about the token


# -- a revoked token raises an alert; the launcher goes on answering -------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_token_raises_one_alert_until_calls_succeed(
    emu: Emulator, launchers: list[FlyLauncher], status: int
) -> None:
    events: list[telemetry.Event] = []
    unsubscribe = telemetry.subscribe(events.append)
    try:
        emu.faults.fail_auth(status)
        fly = launcher_for(launchers, emu)
        with pytest.raises(LauncherRejected, match=str(status)):
            await fly.launch(spec())
        with pytest.raises(LauncherRejected):
            await fly.list_machines()
        (alert,) = fly.alerts()
        assert (alert["kind"], alert["status"]) == ("auth", status)
        assert "FLY_API_TOKEN" in alert["message"]
        raised = [e for e in events if e.name == "plugin:error" and e.get("plugin") == "fly"]
        assert len(raised) == 1  # once when it starts, not once per call
        emu.faults.fail_auth(None)
        await fly.list_machines()
        assert fly.alerts() == []
    finally:
        unsubscribe()


# -- machines Fly left behind ----------------------------------------------------------------


async def test_machines_fly_left_behind_are_flagged_after_a_bound(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    fly = launcher_for(launchers, emu, fly_leftover_seconds=0.5, machine_boot_grace_seconds=1.0)
    emu.faults.fail_launch("failed")
    failed = await fly.launch(spec(FAKE_MACHINE="exit:0"))
    emu.faults.never_boot()
    stuck = await fly.launch(spec(FAKE_MACHINE="exit:0"))
    emu.faults.image_pull_seconds = 60.0
    pulling = await fly.launch(spec(FAKE_MACHINE="exit:0"))
    emu.faults.image_pull_seconds = 0.0
    async with httpx.AsyncClient(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}) as api:
        # ours, but Fly did not auto-destroy it: it rests `stopped`
        metadata = {META_ROLE: ROLE_FUNCTION, META_QUEUE: "default"}
        config = {"image": IMAGE, "env": {"FAKE_MACHINE": "exit:0"}, "metadata": metadata, "restart": {"policy": "no"}}
        kept = (await api.post(MACHINES, json={"config": config})).json()
    await wait_state(emu, failed.id, "failed")
    await wait_state(emu, stuck.id, "starting")
    await wait_state(emu, kept["id"], "stopped")
    first = {s.id: s for s in await fly.list_machines()}
    assert first[failed.id].state == "failed" and first[stuck.id].state == "launching"
    assert not any(first[m].leftover for m in (failed.id, stuck.id, pulling.id, kept["id"]))  # one look is not a bound
    ids = (failed.id, stuck.id, pulling.id, kept["id"])

    async def all_left_behind() -> bool:
        later = {s.id: s for s in await fly.list_machines()}
        return all(later[m].leftover for m in ids)

    await eventually("all four to count as left behind", all_left_behind, timeout=10)


async def test_idle_pool_machines_are_never_leftovers(emu: Emulator, launchers: list[FlyLauncher]) -> None:
    fly = launcher_for(launchers, emu, warm_pool_size=1, fly_leftover_seconds=0.1)
    await fly.launch(spec("default", FAKE_MACHINE="exit:0"))

    async def pooled() -> bool:
        return any(m["config"]["metadata"].get(META_POOL) == "warm" for m in emu.not_destroyed())

    await eventually("a pool machine", pooled)
    await fly.list_machines()
    await asyncio.sleep(0.2)
    pool_ids = {m["id"] for m in emu.not_destroyed() if m["config"]["metadata"].get(META_POOL) == "warm"}
    assert pool_ids.isdisjoint({s.id for s in await fly.list_machines() if s.leftover})


# -- the warm pool meets 412 (image still prepared) and 409 (full host) ----------------------


async def test_warm_pool_start_meeting_412_or_409_creates_instead_and_keeps_the_pool_machine(
    emu: Emulator, launchers: list[FlyLauncher]
) -> None:
    queue = "exports"
    fly = launcher_for(launchers, emu, warm_pool_size=1)
    emu.faults.image_pull_seconds = 1.0
    await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))

    def pool_machines() -> list[dict[str, Any]]:
        return [m for m in emu.not_destroyed() if m["config"]["metadata"].get(META_POOL) == "warm"]

    def one_pooled() -> bool:
        return len(pool_machines()) == 1

    await fly.pool_filled()
    assert one_pooled()
    (pooled,) = pool_machines()
    preparing = await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))  # its image is still being prepared
    assert preparing.id != pooled["id"]
    assert [r.status for r in emu.requests_to("POST", f"{pooled['id']}/start")] == [412]
    await asyncio.sleep(1.0)
    emu.faults.fail_next("start", 409)  # a full host
    full = await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
    assert full.id != pooled["id"]
    still = emu.machine(pooled["id"])
    assert still is not None and still["state"] == "created"  # still in the pool, not destroyed
    started = await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
    assert started.id == pooled["id"]


async def test_the_warm_pool_does_not_overfill_while_fly_lists_its_new_machines_late(
    emu: Emulator, launchers: list[FlyLauncher]
) -> None:
    queue = "images"
    fly = launcher_for(launchers, emu, warm_pool_size=1)
    emu.faults.invisible_seconds = 3.0  # new machines are missing from list for a while

    def pool_machines() -> list[dict[str, Any]]:
        return [
            m
            for m in emu.not_destroyed()
            if m["config"]["metadata"].get(META_POOL) == "warm" and m["config"]["metadata"].get(META_QUEUE) == queue
        ]

    async def one_pooled() -> bool:
        return len(pool_machines()) >= 1

    await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
    await fly.pool_filled()
    assert await one_pooled()
    for _ in range(3):  # each launch looks at the pool while the new pool machine is still unlisted
        await fly.launch(spec(queue, FAKE_MACHINE="exit:0"))
    await asyncio.sleep(0.5)  # let any fill it scheduled run
    assert len(pool_machines()) == 1


def test_a_booting_fly_machine_counts_as_capacity_through_a_slow_image_pull(emu: Emulator) -> None:
    # "this can take some time, maybe low double digit seconds" (Fly docs, machines/overview): 30 s
    # of grace let the scaler launch again while the first image pull was still going on.
    assert fly_settings(emu).machine_boot_grace_seconds == 120
    assert fly_settings(emu, machine_boot_grace_seconds=45).machine_boot_grace_seconds == 45  # set: it wins
    assert Settings(_env_file=None).machine_boot_grace_seconds == 30  # type: ignore[call-arg]  # local processes
