"""What the scaler counts as capacity: a machine still booting counts, even once the reconciler
calls it running (its process or VM is up before its code heartbeats); a stalled one does not."""

from __future__ import annotations

from shared.db.job_store import Conn
from shared.db.pool import connect
from shared.db.sql import QUERIES


async def _live_machines(conn: Conn) -> int:
    cur = await conn.execute(QUERIES["queue_demand"], {"boot_grace_seconds": 30, "seen_within_seconds": 2.5})
    [row] = [r for r in await cur.fetchall() if r["name"] == "default"]
    return int(row["live_machines"])


async def test_a_booting_machine_counts_as_capacity_until_its_boot_grace_ends(database_url):
    async with await connect(database_url) as conn:
        await conn.execute("""INSERT INTO queues (name, "limit") VALUES ('default', 10)""")

        async def machine(machine_id: str, *, launched_ago: float, state: str, seen_ago: float | None) -> None:
            await conn.execute(
                """INSERT INTO machines (id, queue, launcher, state, launched_at, started_at, last_seen_at)
                   VALUES (%(id)s, 'default', 'local', %(state)s, now() - make_interval(secs => %(launched)s),
                           CASE WHEN %(state)s = 'running' THEN now() - make_interval(secs => %(launched)s) END,
                           now() - make_interval(secs => %(seen)s))""",
                {"id": machine_id, "state": state, "launched": launched_ago, "seen": seen_ago},
            )

        # Marked running by the reconciler 5 s ago, no heartbeat of its own yet: still booting.
        await machine("booting", launched_ago=5, state="running", seen_ago=5)
        assert await _live_machines(conn) == 1
        await machine("launching", launched_ago=1, state="launching", seen_ago=None)
        assert await _live_machines(conn) == 2
        await machine("heartbeating", launched_ago=300, state="running", seen_ago=0.5)
        assert await _live_machines(conn) == 3
        # Past its boot grace and silent: stalled, so it must not hide demand.
        await machine("stalled", launched_ago=300, state="running", seen_ago=60)
        assert await _live_machines(conn) == 3
