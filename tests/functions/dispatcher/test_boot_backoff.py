"""Relaunches of a queue whose machines fail at boot back off exponentially, and reset once a
machine of that queue boots."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from functions.dispatcher.duties import backoff_delay
from functions.dispatcher.scaler import read_boot_failures
from functions.registry import seed_queues
from shared.db.pool import connect
from tests.conftest import make_settings
from tests.support.live import live_app, wait_until
from tests.support.metrics import scrape


def test_backoff_delay_doubles_from_the_base_up_to_the_cap():
    assert [backoff_delay(n, base=2.0, cap=60.0) for n in range(8)] == [0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff_delay(10_000, base=2.0, cap=300.0) == 300.0  # no overflow on a long failing streak


def test_machines_that_fail_at_boot_are_relaunched_ever_more_slowly(database_url, s3, tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING, logger="functions.dispatcher.scaler")
    base, cap = 1.0, 4.0
    settings = make_settings(
        database_url,
        s3,
        local_machine_log_dir=str(tmp_path / "logs"),
        machine_boot_backoff_seconds=base,
        machine_boot_backoff_max_seconds=cap,
    )
    seed_queues(database_url, settings)
    with live_app(settings) as app:
        # A queue no machine can serve: each machine exits at boot with a configuration error.
        app.sql("""INSERT INTO queues (name, "limit") VALUES ('broken', 2)""")
        app.sql("INSERT INTO jobs (queue, worker, tenant_id) VALUES ('broken', 'nothing', 'tenant-1')")

        def launches() -> list[tuple[float, int | None]]:
            return app.sql(
                "SELECT extract(epoch FROM launched_at)::float8, exit_code FROM machines"
                " WHERE queue = 'broken' ORDER BY launched_at"
            )

        wait_until("six launches", lambda: len(launches()) >= 6, timeout=120)
        rows = launches()
        samples = scrape(app)
    failed = rows[:5]
    assert all(code not in (None, 0) for _, code in failed), failed
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(rows)]
    # After the n-th consecutive failure the next launch waits base * 2^(n-1), capped.
    for n, gap in enumerate(gaps[:5], start=1):
        assert gap >= backoff_delay(n, base=base, cap=cap), (n, gaps)
    assert (samples.get(("queue_boot_failures", frozenset({("queue", "broken")}))) or 0) >= 5
    held_back = [r for r in caplog.records if r.getMessage() == "machine launches backing off"]
    assert held_back and {getattr(r, "queue", None) for r in held_back} == {"broken"}


async def _machine(
    conn, machine_id: str, *, ago: float, state: str, code: int | None = None, lived: float = 1, jobs_run: int = 0
) -> None:
    """A machine of `default` launched `ago` seconds ago that, if it ended, did so `lived` seconds later."""
    await conn.execute(
        """INSERT INTO machines (id, queue, launcher, state, launched_at, started_at, exited_at, exit_code, jobs_run)
           VALUES (%(id)s, 'default', 'local', %(state)s, now() - make_interval(secs => %(ago)s),
                   now() - make_interval(secs => %(ago)s),
                   CASE WHEN %(state)s IN ('exited', 'failed')
                        THEN now() - make_interval(secs => %(ago)s) + make_interval(secs => %(lived)s) END,
                   %(code)s, %(jobs_run)s)""",
        {"id": machine_id, "ago": ago, "state": state, "code": code, "lived": lived, "jobs_run": jobs_run},
    )


async def test_boot_failures_count_since_the_last_machine_that_booted(database_url):
    grace = 30

    async def failures(queue: str = "default") -> int:
        return (await read_boot_failures(conn, queue, boot_grace_seconds=grace)).failures

    async with await connect(database_url) as conn:
        assert await failures() == 0
        await _machine(conn, "ok-1", ago=100, state="exited", code=0)
        await _machine(conn, "bad-1", ago=90, state="exited", code=2)
        await _machine(conn, "bad-2", ago=85, state="failed")
        # Still launching past the boot grace: it never came up, which counts as a failure too.
        await _machine(conn, "stuck-1", ago=80, state="launching")
        boot = await read_boot_failures(conn, "default", boot_grace_seconds=grace)
        assert boot.failures == 3
        assert 79 <= boot.seconds_since_last < 85  # since the newest launch
        # Still within its boot grace: not (yet) a failure, but the newest launch, so a probe
        # that is still booting holds the next launch back.
        await _machine(conn, "booting-1", ago=1, state="launching")
        boot = await read_boot_failures(conn, "default", boot_grace_seconds=grace)
        assert boot.failures == 3
        assert boot.seconds_since_last < 30
        assert await failures("images") == 0  # counted per queue

        # A machine that finished a job booted, whatever its exit: the count starts over.
        await _machine(conn, "ran-a-job", ago=70, state="exited", code=137, jobs_run=1)
        assert await failures() == 0
        await _machine(conn, "bad-3", ago=60, state="exited", code=1)
        assert await failures() == 1
        # So did one that crashed only after the boot grace.
        await _machine(conn, "crashed-later", ago=55, state="exited", code=1, lived=grace + 5)
        assert await failures() == 0
        await _machine(conn, "bad-4", ago=50, state="exited", code=1)
        assert await failures() == 1
        # And one still running past the boot grace.
        await _machine(conn, "running", ago=45, state="running")
        assert await failures() == 0
