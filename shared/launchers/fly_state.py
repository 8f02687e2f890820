"""Reading a Machines API `Machine` object: our launcher state, and the exit event.

Per the reference (4.2, 4.3): events come newest first, an `exit` event carries
`request.exit_event.{exit_code, oom_killed}` (fly-go prefers `request.MonitorEvent.exit_event`
when present), and destroyed machines stay readable for a while with their events.

A state we do not know (Fly adds states; issue 10 met `pending`) is read as `launching`, i.e.
"not known to be over": only a state that says so, or an exit event, ends a machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .base import MachineState, MachineStatus
from .fly_config import META_QUEUE

_RUNNING: Final = frozenset({"started", "stopping", "restarting", "suspending", "updating", "replacing"})
FAILED_STATES: Final = frozenset({"failed", "launch_failed"})
OVER_STATES: Final = frozenset({"stopped", "suspended", "destroying", "destroyed", "replaced", "migrated"})
# Everything else (creating, created, starting, and states we do not know) is still launching.


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitInfo:
    exit_code: int | None
    oom_killed: bool
    requested_stop: bool


def latest_exit(machine: Mapping[str, Any]) -> ExitInfo | None:
    """The newest `exit` event's details, or None when the machine never exited."""
    exits = [e for e in machine.get("events") or [] if isinstance(e, dict) and e.get("type") == "exit"]
    if not exits:
        return None
    # Newest first on the wire; pick by timestamp anyway so the order is not load-bearing.
    event = max(exits, key=lambda e: e.get("timestamp") or 0)
    request = event.get("request") or {}
    detail = (request.get("MonitorEvent") or {}).get("exit_event") or request.get("exit_event") or {}
    code = detail.get("exit_code")
    return ExitInfo(
        exit_code=code if isinstance(code, int) else None,
        oom_killed=bool(detail.get("oom_killed")),
        requested_stop=bool(detail.get("requested_stop")),
    )


def machine_metadata(machine: Mapping[str, Any]) -> dict[str, str]:
    """`config.metadata` of a machine (empty when absent, e.g. a summary listing).

    On an unreachable host Fly sends `incomplete_config` instead of `config` (fly-go
    `Machine.GetConfig`), which still names whose machine it is.
    """
    config = machine.get("config") or machine.get("incomplete_config") or {}
    metadata = config.get("metadata") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def launcher_state(fly_state: str, exit_info: ExitInfo | None) -> MachineState:
    """Our four states from Fly's: a machine that ended without ever running is `failed`."""
    if fly_state in _RUNNING:
        return "running"
    if fly_state in FAILED_STATES:
        return "failed"
    if fly_state not in OVER_STATES:
        return "launching"
    return "exited" if exit_info is not None else "failed"


def machine_status(machine: Mapping[str, Any], *, leftover: bool = False) -> MachineStatus:
    """A MachineStatus from a Machines API `Machine` object."""
    exit_info = latest_exit(machine)
    state = launcher_state(str(machine.get("state", "")), exit_info)
    over = state in ("exited", "failed")
    return MachineStatus(
        id=str(machine["id"]),
        queue=machine_metadata(machine).get(META_QUEUE),
        state=state,
        exit_code=exit_info.exit_code if over and exit_info else None,
        oom_killed=bool(over and exit_info and exit_info.oom_killed),
        leftover=leftover,
    )
