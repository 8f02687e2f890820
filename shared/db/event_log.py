"""Sending the logged job events (migrations/0012): the API hubs and the dispatcher's leader both
call `flush`; `job_events_flush` lets one flush run at a time."""

from __future__ import annotations

from shared.db.job_store import Conn
from shared.db.sql import QUERIES


async def flush(conn: Conn, *, max_events: int) -> int:
    """Send up to `max_events` logged events on `cp_events` and remove them from the log, in one
    transaction; returns how many were sent (0 also while another flush runs)."""
    cur = await conn.execute(QUERIES["flush_job_events"], {"max": max_events}, prepare=True)
    row = await cur.fetchone()
    return int(row["sent"]) if row is not None else 0
