"""The NOTIFY channels and control messages, in one place.

`cp_jobs`: sent by a statement trigger (migrations/0001) whenever jobs of a queue become available;
the payload is the queue name. Machines and the dispatcher LISTEN to it.
`cp_control`: messages to the dispatcher's leader, as JSON (`stop_machines_message`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from psycopg import sql

JOBS_CHANNEL: Final = "cp_jobs"
CONTROL_CHANNEL: Final = "cp_control"


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
