"""A TEST DOUBLE of the Fly Machines API. Never a production component.

It serves `/v1/apps/{app}/machines…` the way `/work/shared/reference/fly-machines-api.md`
section 11 asks (create, get, list with metadata filters, wait with its 408 and 60 s clamp,
start, stop, delete with force/kill, leases, events with exit events), and really runs each
machine's `init.cmd` as a local process: with the config env, a base env standing in for the
worker app's secrets, and FLY_MACHINE_ID. It honours `auto_destroy` and the restart policy,
checks the bearer token, and can inject faults (429/503 on create, 408 after creating, machines
that never boot, OOM kills, a boot delay).

Use `running_emulator(...)` in tests, or `python -m infra.fly_emulator --port N` as a server.
"""

from __future__ import annotations

from .faults import Faults
from .harness import Emulator, running_emulator
from .recorder import RecordedRequest

__all__ = ["Emulator", "Faults", "RecordedRequest", "running_emulator"]
