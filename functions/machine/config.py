"""The machine's contract: what it reads from its environment, and what its exit code means."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from shared.settings import Settings

EXIT_OK: Final = 0  # done or idle
EXIT_CONFIG: Final = 2  # bad configuration
EXIT_TIMED_OUT: Final = 3  # a job overran its timeout: the process ends so its thread work stops
EXIT_SELF_FENCED: Final = 4  # the database was out of reach while it held jobs

DB_RETRY_MAX_SECONDS: Final = 5.0  # backoff cap for claims, heartbeats and outcome writes
HAND_BACK_SECONDS: Final = 5.0  # how long a stopping machine tries to hand a job back
CHECKOUT_TIMEOUT_SECONDS: Final = 3.0  # a pool checkout waits this long, then the caller retries


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineConfig:
    queue: str
    machine_id: str
    first_job_id: int | None
    max_jobs: int
    idle_seconds: float
    concurrency: int
    shutdown_grace_seconds: float = 20.0

    @classmethod
    def from_env(cls, settings: Settings, env: dict[str, str], *, queues: Collection[str]) -> MachineConfig:
        """Read the machine contract from the environment. Raises ValueError when it is incomplete."""
        queue = env.get("JOB_QUEUE", "")
        if queue not in queues:
            raise ValueError(f"JOB_QUEUE must be one of {sorted(queues)}, got {queue!r}")
        machine_id = env.get("FLY_MACHINE_ID") or env.get("MACHINE_ID") or f"adhoc-{os.getpid()}"
        job_id = env.get("JOB_ID")
        return cls(
            queue=queue,
            machine_id=machine_id,
            first_job_id=int(job_id) if job_id else None,
            max_jobs=int(env.get("MACHINE_MAX_JOBS", settings.machine_max_jobs)),
            idle_seconds=float(env.get("MACHINE_IDLE_SECONDS", settings.machine_idle_seconds)),
            concurrency=int(env.get("MACHINE_CONCURRENCY", settings.machine_concurrency)),
            shutdown_grace_seconds=settings.machine_shutdown_grace_seconds,
        )
