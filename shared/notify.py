"""The NOTIFY channels and control messages, in one place.

`cp_jobs`: sent by a statement trigger (migrations/0001) whenever jobs of a queue become available;
the payload is the queue name. Machines and the dispatcher LISTEN to it.
`cp_control`: messages to the dispatcher's leader, as JSON (`stop_machines_message`).
`cp_events`: every job insert and state change as a JSON array of small events (`job_events`),
sent by the insert trigger at commit (migrations/0006), the others logged by triggers (0012) and
sent by `job_events_flush`, which every API instance's event hub calls; each instance LISTENs on
one connection and fans them out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from psycopg import sql

JOBS_CHANNEL: Final = "cp_jobs"
CONTROL_CHANNEL: Final = "cp_control"
EVENTS_CHANNEL: Final = "cp_events"


@dataclass(frozen=True, slots=True)
class JobEventNote:
    """One event of a `cp_events` payload: what the trigger knew, nothing read from the row."""

    event_id: int
    type: str
    job_id: int
    state: str
    queue: str
    tenant_id: str
    attempt: int
    batch_id: str | None
    # a `progress` event's progress as the trigger saw it (None: not carried, read it from the row)
    progress: dict[str, Any] | None = field(default=None, hash=False)
    # a failure's own entry in the job's `errors`, counted from 1 (None: not carried)
    error_number: int | None = None


def job_events(payload: str) -> list[JobEventNote]:
    """The events of a `cp_events` payload; anything malformed is skipped, never raised."""
    try:
        rows = json.loads(payload)
    except ValueError:
        return []
    events = []
    for row in rows if isinstance(rows, list) else []:
        if not (isinstance(row, list) and len(row) in (8, 9)):
            continue
        event_id, kind, job_id, state, queue, tenant, attempt, batch = row[:8]
        extra = row[8] if len(row) == 9 else None
        progress = extra if isinstance(extra, dict) else None
        error_number = extra if isinstance(extra, int) and not isinstance(extra, bool) and extra > 0 else None
        if not (
            isinstance(event_id, int)
            and isinstance(job_id, int)
            and isinstance(attempt, int)
            and all(isinstance(v, str) for v in (kind, state, queue, tenant))
            and (batch is None or isinstance(batch, str))
        ):
            continue
        events.append(
            JobEventNote(event_id, kind, job_id, state, queue, tenant, attempt, batch, progress, error_number)
        )
    return events


def stop_machines_message(machine_ids: Iterable[str]) -> str:
    """Ask the leader to stop these machines (holders of cancelled jobs) when nothing else runs there."""
    return json.dumps({"stopMachines": sorted(set(machine_ids))})


def machines_to_stop(payload: str) -> list[str]:
    """The machines a control message asks to stop ([] for anything else)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return []
    machines = message.get("stopMachines", []) if isinstance(message, dict) else []
    return [m for m in machines if isinstance(m, str)]


async def listen(conn: Any, channel: str) -> None:
    """LISTEN on `channel` (an identifier, not a parameter: quoted here)."""
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


async def notify(conn: Any, channel: str, payload: str) -> None:
    """NOTIFY `channel` with `payload`, inside the caller's transaction."""
    from shared.db.sql import QUERIES

    await conn.execute(QUERIES["notify"], {"channel": channel, "payload": payload})
