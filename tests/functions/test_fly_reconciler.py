"""The reconciler with LAUNCHER=fly against Fly on a bad day (issue 10), on a real database.

The emulator's machines run the fake worker image of tests/shared/launchers/fly_support.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from functions.dispatcher.reconciler import Reconciler
from functions.registry import machine_program
from infra.fly_emulator import Emulator
from shared.db import job_store
from shared.db.pool import Pool
from shared.launchers.fly import FlyLauncher
from tests.shared.launchers.fly_support import FAST, MACHINES, TOKEN, fake_image_emulator, fly_settings, spec

UNKNOWN_ID = "0123456789abcd"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with fake_image_emulator(tmp_path_factory.mktemp("fake-image")) as emulator:
        yield emulator


@pytest.fixture
async def fly(emu: Emulator) -> AsyncIterator[FlyLauncher]:
    emu.faults.clear()
    emu.limiter.reset()
    launcher = FlyLauncher(
        fly_settings(emu, fly_gone_confirm_seconds=0.5, fly_leftover_seconds=0.5, machine_boot_grace_seconds=2.0),
        retry=FAST,
        program=machine_program(),
    )
    try:
        yield launcher
    finally:
        await launcher.aclose()
        emu.faults.clear()
        emu.limiter.reset()
        async with httpx.AsyncClient(base_url=emu.url, headers={"Authorization": f"FlyV1 {TOKEN}"}) as api:
            for machine in emu.not_destroyed():
                await api.delete(f"{MACHINES}/{machine['id']}", params={"force": "true"})


async def launch(pool: Pool, fly: FlyLauncher, **env: str) -> str:
    """Launch a machine and record it, as the scaler does."""
    ref = await fly.launch(spec("default", **env))
    await record(pool, ref.id)
    return ref.id


async def record(pool: Pool, machine_id: str) -> None:
    async with pool.connection() as conn:
        await job_store.record_machine(
            conn, machine_id=machine_id, queue="default", launcher="fly", job_id=None, detail={}
        )


async def row(pool: Pool, machine_id: str) -> tuple[str, int | None]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT state, exit_code FROM machines WHERE id = %s", (machine_id,))
        found: Any = await cur.fetchone()
    return found["state"], found["exit_code"]


async def settle(what: str, predicate: Any, reconciler: Reconciler, timeout: float = 30.0) -> None:
    """Run the reconciler until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while True:
        await reconciler.run_once()
        if await predicate():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_a_failing_call_never_escapes_the_reconciler(emu: Emulator, pool: Pool, fly: FlyLauncher) -> None:
    await record(pool, UNKNOWN_ID)  # first in line, and not listed: asked about with a get
    machine_id = await launch(pool, fly, FAKE_MACHINE="sleep")
    await asyncio.to_thread(emu.wait_for_state, machine_id, "started")
    emu.faults.fail_next("list", 500, times=FAST.attempts)
    emu.faults.fail_next("get", 503, times=FAST.attempts)
    reconciler = Reconciler(pool, fly)
    await reconciler.run_once()  # the list fails: must not raise
    assert await row(pool, machine_id) == ("launching", None)  # no answer is not an answer
    await reconciler.run_once()  # the get of the first machine fails: the next ones still count
    assert reconciler.errors["unavailable"] == 2
    assert await row(pool, machine_id) == ("running", None)
    assert (await row(pool, UNKNOWN_ID))[0] == "launching"


async def test_a_revoked_token_never_escapes_the_reconciler(emu: Emulator, pool: Pool, fly: FlyLauncher) -> None:
    machine_id = await launch(pool, fly, FAKE_MACHINE="sleep")
    emu.faults.fail_auth(401)
    reconciler = Reconciler(pool, fly)
    await reconciler.run_once()
    assert reconciler.errors["auth"] >= 1
    assert fly.alerts() and fly.alerts()[0]["status"] == 401
    assert await row(pool, machine_id) == ("launching", None)
    emu.faults.fail_auth(None)

    async def running() -> bool:
        return (await row(pool, machine_id))[0] == "running"

    await settle("the machine to be seen running", running, reconciler)
    assert fly.alerts() == []


@pytest.mark.usefixtures("fly")  # its teardown clears the faults and destroys what is left
async def test_a_machine_fly_cannot_see_yet_is_not_marked_gone(emu: Emulator, pool: Pool) -> None:
    # Fly catches up when the test says so, not after a fixed time a loaded box may outrun, and the
    # boot grace outlasts every read below however slow the box.
    emu.faults.invisible_seconds = 600.0
    settings = fly_settings(
        emu, fly_gone_confirm_seconds=0.5, fly_leftover_seconds=0.5, machine_boot_grace_seconds=60.0
    )
    fly = FlyLauncher(settings, retry=FAST, program=machine_program())
    try:
        machine_id = await launch(pool, fly, FAKE_MACHINE="exit:0")
        reconciler = Reconciler(pool, fly)
        for _ in range(3):  # 404s (and a list without it) for longer than the confirmation window
            await reconciler.run_once()
            assert await row(pool, machine_id) == ("launching", None)
            await asyncio.sleep(0.4)
        emu.reveal(machine_id)

        async def exited() -> bool:
            return (await row(pool, machine_id))[0] == "exited"

        await settle("the real exit", exited, reconciler)
        assert await row(pool, machine_id) == ("exited", 0)  # read from its exit event
    finally:
        await fly.aclose()


async def test_a_machine_is_marked_gone_after_404s_two_reads_apart(pool: Pool, fly: FlyLauncher) -> None:
    await record(pool, UNKNOWN_ID)
    reconciler = Reconciler(pool, fly)
    await reconciler.run_once()
    await reconciler.run_once()
    assert (await row(pool, UNKNOWN_ID))[0] == "launching"  # one read, or two in a row, prove nothing
    await asyncio.sleep(0.6)
    await reconciler.run_once()
    assert await row(pool, UNKNOWN_ID) == ("exited", None)


async def test_one_list_call_replaces_a_get_per_machine(emu: Emulator, pool: Pool, fly: FlyLauncher) -> None:
    ids = [await launch(pool, fly, FAKE_MACHINE="sleep") for _ in range(5)]
    for machine_id in ids:
        await asyncio.to_thread(emu.wait_for_state, machine_id, "started")
    reconciler = Reconciler(pool, fly)
    since = time.monotonic()
    await reconciler.run_once()
    report = emu.rate_report(since)
    assert report["list"].calls == 1 and "get" not in report
    assert {(await row(pool, m))[0] for m in ids} == {"running"}


async def test_machines_fly_left_behind_are_destroyed_after_a_bound(
    emu: Emulator, pool: Pool, fly: FlyLauncher
) -> None:
    emu.faults.fail_launch("failed")
    failed = await launch(pool, fly, FAKE_MACHINE="exit:0")
    emu.faults.never_boot()
    stuck = await launch(pool, fly, FAKE_MACHINE="exit:0")
    await asyncio.to_thread(emu.wait_for_state, failed, "failed")
    await asyncio.to_thread(emu.wait_for_state, stuck, "starting")
    reconciler = Reconciler(pool, fly)
    await reconciler.run_once()
    assert {m["id"] for m in emu.not_destroyed()} >= {failed, stuck}  # not at the first look

    async def both_gone() -> bool:
        return {failed, stuck}.isdisjoint(m["id"] for m in emu.not_destroyed())

    await settle("the leftovers to be destroyed", both_gone, reconciler)
    assert reconciler.leftovers_destroyed >= 2

    async def both_failed() -> bool:
        return {(await row(pool, m))[0] for m in (failed, stuck)} == {"failed"}

    await settle("their rows to say failed", both_failed, reconciler)
