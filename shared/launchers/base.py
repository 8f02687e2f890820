"""The seam between the dispatcher and wherever function machines run.

Two implementations: `local` (a subprocess per machine) and `fly` (the Fly Machines API).
As in FLAME, a machine owns its lifecycle (it exits when idle or after MACHINE_MAX_JOBS), so
`stop` is a backstop for cancelled or timed-out work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shared.functions import SMALL_GUEST, Guest

MachineState = Literal["launching", "running", "exited", "failed"]


def _small(queue: str) -> Guest:
    return SMALL_GUEST


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineProgram:
    """What every function machine runs, handed to the launchers by whoever builds them (the
    functions package knows its entry point and its functions; `shared/` does not)."""

    module: str  # started as `python -m <module>`; its queue comes from JOB_QUEUE
    preload: tuple[str, ...] = ()  # what the local fork server imports ahead of every machine
    guests: Callable[[str], Guest] = _small  # the size of a queue's machines on Fly

    @property
    def command(self) -> tuple[str, ...]:
        return ("python", "-m", self.module)


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineSpec:
    """What to launch: one machine for `queue`, woken by `job_id`, with the contract env."""

    queue: str
    job_id: int | None
    env: dict[str, str] = field(default_factory=dict)  # JOB_QUEUE, JOB_ID, MACHINE_* drain settings


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineRef:
    id: str
    detail: dict[str, str | int | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineStatus:
    id: str
    queue: str | None
    state: MachineState
    exit_code: int | None = None
    oom_killed: bool = False
    # The launcher left it behind (failed, stuck booting, stopped but not removed) long enough
    # that it should be destroyed: `stop` does that.
    leftover: bool = False


class Launcher(Protocol):
    """Creates, inspects and stops function machines."""

    kind: str

    async def launch(self, spec: MachineSpec) -> MachineRef:
        """Start a machine. Raises LauncherUnavailable (retry later) or LauncherRejected."""
        ...

    async def stop(self, machine_id: str) -> None:
        """Stop a machine; no error when it is already gone."""
        ...

    async def status(self, machine_id: str) -> MachineStatus:
        """The machine's state; an unknown machine reports `exited`."""
        ...

    async def list_machines(self, *, queue: str | None = None) -> list[MachineStatus]:
        """Machines this launcher knows of (for reconciliation after a dispatcher restart)."""
        ...

    async def aclose(self) -> None:
        """Release clients; machines keep running."""
        ...
