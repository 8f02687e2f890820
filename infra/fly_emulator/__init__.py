"""A TEST DOUBLE of the Fly Machines API. Never a production component.

It serves `/v1/apps/{app}/machines…` the way `/work/shared/reference/fly-machines-api.md`
section 11 asks (create, get, list with metadata filters, wait with its 408 and 60 s clamp,
start, stop, delete with force/kill, leases, events with exit events), and really runs each
machine's `init.cmd` as a local process: with the config env, a base env standing in for the
worker app's secrets, and FLY_MACHINE_ID. It honours `auto_destroy` and the restart policy,
checks the bearer token, and behaves like Fly on a bad day when asked (faults.py: failures and
connection resets on any call, machines invisible after create, a lagging list, image pulls with
412 on start/stop, `failed`/`launch_failed` machines, unreachable hosts, per-region capacity and
quota, revoked tokens, and chaos at random), with Fly's per-action rate limits (ratelimit.py) and
a recorder that reports the call rate per action (recorder.py).

Use `running_emulator(...)` in tests, or `python -m infra.fly_emulator --port N` as a server.
"""

from __future__ import annotations

from .faults import RESET, Chaos, Faults
from .harness import Emulator, running_emulator
from .recorder import ActionRate, RecordedRequest

__all__ = ["RESET", "ActionRate", "Chaos", "Emulator", "Faults", "RecordedRequest", "running_emulator"]
