"""Schedules end to end: the API keeps a tenant's schedules, and the dispatcher's leader inserts
every occurrence of an every-minute schedule exactly once, across a leader that dies without
resigning and a standby that takes over. "Now" is injected: no test waits for a minute."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from functions.dispatcher.leader import Dispatcher
from functions.dispatcher.scheduler import Scheduler
from functions.registry import machine_program, seed_queues
from shared.db.pool import open_pool
from shared.launchers import make_launcher
from tests.conftest import make_settings
from tests.support.live import LiveApp, live_app

JOB = {"queue": "default", "function": "echo", "args": {"nightly": True}}


class Clock:
    """The scheduler's "now", moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def app(database_url, s3, tmp_path) -> Iterator[LiveApp]:
    # The API alone: the test runs the dispatchers itself, with its own clock.
    settings = make_settings(
        database_url, s3, run_dispatcher=False, local_machine_log_dir=str(tmp_path / "logs"), dispatcher_lease_seconds=2
    )
    seed_queues(database_url, settings)
    with live_app(settings) as live:
        yield live


def _rows(database_url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


async def _until(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await asyncio.to_thread(predicate)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return value


def _fired(database_url: str, schedule_id: str) -> list[tuple[datetime, int]]:
    return [
        (row[0], row[1])
        for row in _rows(
            database_url,
            """SELECT r.occurrence_at, count(j.id) FROM schedule_runs r
                 LEFT JOIN jobs j ON j.meta->>'scheduleId' = r.schedule_id::text
                                 AND (j.meta->>'occurrenceAt')::timestamptz = r.occurrence_at
                WHERE r.schedule_id = %s GROUP BY r.occurrence_at ORDER BY r.occurrence_at""",
            (schedule_id,),
        )
    ]


async def test_every_minute_fires_once_per_occurrence_across_a_leader_change(app: LiveApp):
    with app.admin() as admin:  # the jobs stay queued: this test is about inserting them
        assert admin.post("/admin/queues/default/pause").status_code == 200
    with app.client() as client:
        response = client.post("/schedules", json={"name": "nightly-ish", "cron": "* * * * *", "job": JOB})
    assert response.status_code == 201, response.text
    schedule = response.json()
    first = datetime.fromisoformat(schedule["nextRunAt"])
    clock = Clock(first + timedelta(seconds=5))
    url = app.settings.database_url
    settings = app.settings.model_copy(update={"run_dispatcher": True})
    pool = await open_pool(url, min_size=1, max_size=6)
    launcher = make_launcher(settings, machine_program())
    leader_a, leader_b = (Dispatcher(settings, pool, launcher, clock=clock) for _ in range(2))
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(leader_a.run(stop_a))
    task_b: asyncio.Task[None] | None = None
    try:
        await _until("A to lead", lambda: leader_a.role == "leader")
        await _until("the first occurrence", lambda: len(_fired(url, schedule["id"])) == 1)
        clock.now = first + timedelta(seconds=65)
        await _until("the second occurrence", lambda: len(_fired(url, schedule["id"])) == 2)

        task_b = asyncio.create_task(leader_b.run(stop_b))
        await _until("B to stand by", lambda: leader_b.role == "standby")
        task_a.cancel()  # A dies without resigning: B takes over once A's lease expires
        await asyncio.gather(task_a, return_exceptions=True)
        clock.now = first + timedelta(seconds=125)
        await _until("B to lead", lambda: leader_b.role == "leader")
        await _until("the third occurrence", lambda: len(_fired(url, schedule["id"])) == 3)

        # A leader that thaws after losing its lease, acting on what it read before, inserts nothing.
        for stale_now in (first + timedelta(seconds=65), first + timedelta(seconds=125)):
            assert await Scheduler(pool, 60.0, clock=lambda at=stale_now: at).run_once() == 0  # type: ignore[misc]
    finally:
        stop_b.set()
        for task in (task_a, task_b):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (task_a, task_b) if t is not None), return_exceptions=True)
        await launcher.aclose()
        await pool.close()

    assert _fired(url, schedule["id"]) == [(first + timedelta(minutes=n), 1) for n in range(3)]
    with app.client() as client:
        view = client.get(f"/schedules/{schedule['id']}").json()
    assert datetime.fromisoformat(view["nextRunAt"]) == first + timedelta(minutes=3)
    assert datetime.fromisoformat(view["lastRunAt"]) == first + timedelta(minutes=2)
    [(args, meta)] = _rows(url, "SELECT args, meta FROM jobs WHERE (meta->>'occurrenceAt')::timestamptz = %s", (first,))
    assert args == {"nightly": True} and meta["scheduleId"] == schedule["id"]


def test_schedules_are_listed_paused_resumed_and_deleted_per_tenant(app: LiveApp):
    with app.client() as client:
        created = client.post(
            "/schedules",
            json={"name": "riga", "cron": "0 9 * * MON", "timeZone": "Europe/Riga", "misfire": "runOnce", "job": JOB},
        ).json()
        assert created["paused"] is False and created["misfire"] == "runOnce"
        # Mondays 09:00 in Riga: 06:00 or 07:00 UTC depending on the season.
        next_run = datetime.fromisoformat(created["nextRunAt"]).astimezone(UTC)
        assert next_run.weekday() == 0 and next_run.hour in (6, 7) and next_run > datetime.now(UTC)
        duplicate = client.post("/schedules", json={"name": "riga", "cron": "* * * * *", "job": JOB})
        assert duplicate.status_code == 409
        assert [s["name"] for s in client.get("/schedules").json()["schedules"]] == ["riga"]
        paused = client.post(f"/schedules/{created['id']}/pause").json()
        assert paused["paused"] is True
        resumed = client.post(f"/schedules/{created['id']}/resume").json()
        assert resumed["paused"] is False and resumed["nextRunAt"] == created["nextRunAt"]
    with app.client("tenant-2") as other:
        assert other.get(f"/schedules/{created['id']}").status_code == 404
        assert other.post(f"/schedules/{created['id']}/pause").status_code == 404
        assert other.delete(f"/schedules/{created['id']}").status_code == 404
        assert other.get("/schedules").json() == {"schedules": []}
    with app.client() as client:
        assert client.delete(f"/schedules/{created['id']}").json() == {"deleted": True}
        assert client.get(f"/schedules/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"cron": "61 * * * *"}, ""),
        ({"cron": "*/5 * * * * *"}, ""),
        ({"timeZone": "Mars/Olympus"}, "timeZone"),
        ({"job": {"queue": "nope"}}, "job.queue"),
        ({"job": {**JOB, "options": {"scheduleIn": 5}}}, "job.options.scheduleIn"),
        ({"job": {**JOB, "options": {"unique": {}}}}, "job.options.unique"),
        ({"job": {"queue": "emails", "to": "x", "subject": "s", "text": "t"}}, "job.to"),
    ],
)
def test_an_unusable_schedule_is_a_422_and_creates_nothing(app: LiveApp, body: dict, path: str):
    with app.client() as client:
        response = client.post("/schedules", json={"name": "bad", "cron": "* * * * *", "job": JOB, **body})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["path"] == path or response.json()["errors"][0]["path"].startswith(path)
    assert _rows(app.settings.database_url, "SELECT count(*) FROM schedules") == [(0,)]
