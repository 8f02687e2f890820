"""Progress events with the longest progress they carry (0016) and the longest other values stay
under the notification payload limit (from an adversarial review)."""

from __future__ import annotations

import json

import psycopg

from tests.functions.ingress.test_event_triggers import NOTIFY_LIMIT, listener, received  # noqa: F401


def test_worst_case_progress_events_stay_under_the_payload_limit(
    database_url: str,
    listener: psycopg.Connection,  # noqa: F811
) -> None:
    tenant, queue, batch = "\x01" * 128, "\x02" * 64, "\x03" * 5000
    message = "\x04" * 168  # 166 * 6 = 996 bytes escaped: the progress text just under 1,024
    with psycopg.connect(database_url, autocommit=True) as conn:
        (job_id,) = conn.execute(
            "INSERT INTO jobs (queue, worker, tenant_id, batch_id) VALUES (%s, 'echo', %s, %s) RETURNING id",
            (queue, tenant, batch),
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "UPDATE jobs SET state = 'executing', attempt = 1, attempted_by = 'm-1', attempted_at = now(),"
            " heartbeat_at = now() WHERE id = %s",
            (job_id,),
        )
        sizes_of = []
        for done in range(60):
            progress = json.dumps({"done": done, "message": message[: 166 - (done % 3)]})
            size = conn.execute("SELECT octet_length(%s::jsonb::text)", (progress,)).fetchone()[0]  # type: ignore[index]
            sizes_of.append(size)
            conn.execute("UPDATE jobs SET progress = %s::jsonb WHERE id = %s", (progress, job_id))
    assert max(sizes_of) <= 1024
    events, sizes = received(listener)
    assert sum(e.progress is not None for e in events) == 60
    assert max(sizes) < NOTIFY_LIMIT, max(sizes)
