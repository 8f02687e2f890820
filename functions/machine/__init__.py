"""Function machine: `python -m functions.machine`.

Contract (architecture spec): JOB_QUEUE names the one function this machine runs; JOB_ID is the
job that caused the launch (claimed first while still available); MACHINE_MAX_JOBS and
MACHINE_IDLE_SECONDS bound its life; its id is FLY_MACHINE_ID on Fly (MACHINE_ID locally).
It claims jobs of its queue, heartbeats them, runs the handler under the function's timeout,
records each outcome with a write fenced by the claim's token, and exits when done or idle. On
SIGTERM it stops claiming, lets held jobs finish within the grace period, hands the rest back,
and exits.

A machine survives its own faults: a failed claim or heartbeat is retried with backoff, and an
outcome is retried while the database is away. If it cannot reach the database for half the
lifeline's rescue window while it holds jobs, it fences itself: it stops its handlers, publishes
nothing, hands back what it can and exits, before the lifeline gives those jobs to someone else.

Parts: config (the contract, exit codes), claimer (the claim loop), executor (one job, its
outcome), recorder (fenced, batched writes), heartbeat, reach (the retry rule), machine (the
state they share), main (the process).
"""

from .config import EXIT_CONFIG, EXIT_OK, EXIT_SELF_FENCED, EXIT_TIMED_OUT, MachineConfig
from .machine import Machine
from .main import main, main_async

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_SELF_FENCED",
    "EXIT_TIMED_OUT",
    "Machine",
    "MachineConfig",
    "main",
    "main_async",
]
