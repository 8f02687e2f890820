"""A machine survives its own faults (in process, against a real Postgres reached through a proxy
the test cuts): a failed claim is retried while held jobs keep running, and a machine that cannot
reach the database for half the rescue window stops its work and publishes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

from functions.handlers.base import HandlerContext
from functions.machine import EXIT_OK, EXIT_SELF_FENCED, Machine, MachineConfig
from shared.db import job_store, transitions
from shared.db.models import Job, JobState, NewJob
from shared.db.pool import connect, open_pool
from shared.settings import Settings
from tests.conftest import make_settings
from tests.functions.machine.conftest import row
from tests.support.tcp_proxy import TcpProxy, tcp_proxy


@dataclass
class Gates:
    """A handler whose jobs wait for the test: started[id] is set when a job starts, open it with release(id)."""

    started: dict[int, asyncio.Event] = field(default_factory=dict)
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    def event(self, table: dict[int, asyncio.Event], job_id: int) -> asyncio.Event:
        return table.setdefault(job_id, asyncio.Event())

    def release(self, job_id: int) -> None:
        self.event(self.gates, job_id).set()

    def module(self) -> ModuleType:
        module = ModuleType("gated_handler")

        async def run(job: Job, ctx: HandlerContext) -> dict[str, Any]:
            self.event(self.started, job.id).set()
            try:
                await self.event(self.gates, job.id).wait()
            except asyncio.CancelledError:
                self.cancelled.append(job.id)
                raise
            self.finished.append(job.id)
            return {"done": job.id}

        module.run = run  # type: ignore[attr-defined]
        return module


@pytest.fixture
def proxy(settings: Settings) -> Any:
    url = urlsplit(settings.database_url)
    assert url.hostname and url.port
    with tcp_proxy(url.hostname, url.port) as running:
        yield running


async def _machine(settings: Settings, proxy: TcpProxy, gates: Gates, **overrides: Any) -> AsyncIterator[Machine]:
    through_proxy = make_settings(proxy.url(settings.database_url), None, bucket_name=settings.bucket_name, **overrides)
    pool = await open_pool(through_proxy.database_url, min_size=1, max_size=4, checkout_timeout=1.0, connect_timeout=2)
    config = MachineConfig(
        queue="default", machine_id="m-faults", first_job_id=None, max_jobs=10, idle_seconds=1.0, concurrency=2
    )
    try:
        yield Machine(settings=through_proxy, config=config, handler=gates.module(), pool=pool)
    finally:
        await pool.close()


async def _insert(settings: Settings, count: int = 1) -> list[int]:
    conn = await connect(settings.database_url)
    async with conn:
        jobs = [NewJob(queue="default", worker="gated", tenant_id="t1", args={"n": n}) for n in range(count)]
        return [job.id for job in await job_store.insert_jobs(conn, jobs)]


async def test_a_failed_claim_is_retried_and_the_held_job_keeps_running(settings, proxy):
    gates = Gates()
    [first] = await _insert(settings)
    async for machine in _machine(settings, proxy, gates, heartbeat_interval_seconds=0.5, lifeline_rescue_after=30):
        running = asyncio.create_task(machine.run())
        await asyncio.wait_for(gates.event(gates.started, first).wait(), 30)
        proxy.cut()  # the claim for a second slot now fails (and the heartbeat, and the listener)
        [second] = await _insert(settings)
        await asyncio.sleep(2.0)
        assert not running.done(), "a failed claim must not end the machine"
        proxy.restore()
        await asyncio.wait_for(gates.event(gates.started, second).wait(), 30)
        gates.release(first)
        gates.release(second)
        assert await asyncio.wait_for(running, 60) == EXIT_OK
    for job_id in (first, second):
        job = await row(settings, job_id)
        assert (job.state, job.attempt, job.result) == (JobState.COMPLETED, 1, {"done": job_id})


async def test_a_machine_cut_off_for_half_the_rescue_window_fences_itself(settings, proxy):
    """Cut off while it holds a job, the machine stops the handler, records nothing and exits 4
    before the lifeline (after the full window) may give the job to another machine: the test runs
    the lifeline's rescue against the database meanwhile and looks, when it rescues the job,
    whether the handler had already been stopped (an order of events, not a timing)."""
    gates = Gates()
    [job_id] = await _insert(settings)
    stopped_when_rescued: list[bool] = []

    async def lifeline() -> None:
        conn = await connect(settings.database_url)  # not through the cut proxy
        async with conn:
            while not stopped_when_rescued:
                rescued = await transitions.rescue_stale(conn, rescue_after_seconds=4)
                for job in rescued:
                    assert (job.id, job.state) == (job_id, "retryable")
                    stopped_when_rescued.append(job_id in gates.cancelled)
                await asyncio.sleep(0.05)

    async for machine in _machine(settings, proxy, gates, heartbeat_interval_seconds=0.3, lifeline_rescue_after=4):
        running = asyncio.create_task(machine.run())
        await asyncio.wait_for(gates.event(gates.started, job_id).wait(), 30)
        proxy.cut()
        await asyncio.wait_for(lifeline(), 30)
        if stopped_when_rescued != [True]:
            running.cancel()
        # The handler is what must stop first (closing the pool against an unreachable database may
        # take longer: a loaded CI box once exited after the window, the handler long stopped).
        assert stopped_when_rescued == [True], "the lifeline gave the job away while its handler still ran"
        code = await asyncio.wait_for(running, 30)
    assert code == EXIT_SELF_FENCED
    assert gates.cancelled == [job_id] and gates.finished == []
    held = await row(settings, job_id)
    assert held.state == JobState.RETRYABLE and held.result is None  # nothing was published
