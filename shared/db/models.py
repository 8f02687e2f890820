"""Rows as frozen dataclasses; nothing outside shared/db sees a raw database row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.vocabulary import ALLOWED, FINAL_STATES, JobState

__all__ = ["ALLOWED", "FINAL_STATES", "Fence", "Job", "JobState", "MachineRecord", "NewJob", "QueueStatus"]

JSONDict = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One row of `jobs`."""

    id: int
    queue: str
    worker: str
    state: JobState
    tenant_id: str
    args: JSONDict
    meta: JSONDict
    tags: list[str]
    priority: int
    attempt: int
    max_attempts: int
    errors: list[JSONDict]
    result: JSONDict | None
    batch_id: str | None
    unique_key: str | None
    claim_token: UUID | None  # set by every claim; the fence of the current (or last) attempt
    attempted_by: str | None
    heartbeat_at: datetime | None
    inserted_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    discarded_at: datetime | None
    progress: JSONDict | None = None  # what the handler last reported (done, total, message)
    workflow_id: UUID | None = None
    conflict: bool = False  # set on a unique insert that returned an existing job

    @classmethod
    def from_row(cls, row: JSONDict, *, conflict: bool = False) -> Job:
        fields = {name: row[name] for name in _JOB_COLUMNS}
        fields["state"] = JobState(row["state"])
        return cls(**fields, conflict=conflict)


_JOB_COLUMNS = tuple(name for name in Job.__dataclass_fields__ if name != "conflict")


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job to insert."""

    queue: str
    worker: str
    tenant_id: str
    args: JSONDict
    meta: JSONDict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    priority: int = 0
    max_attempts: int = 5
    scheduled_at: datetime | None = None
    batch_id: str | None = None
    unique_key: str | None = None
    unique_states: list[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fence:
    """Identifies one claim of a job; every write about a held job carries it.

    The token is made by the database at each claim (a trigger), so no two claims share it,
    whereas (attempt, machine) repeats after a snooze, a hand-back or a retry.
    """

    job_id: int
    claim_token: UUID
    machine_id: str

    @classmethod
    def of(cls, job: Job) -> Fence:
        """The fence of the claim `job` was returned by. Raises ValueError for an unclaimed row."""
        if job.claim_token is None or job.attempted_by is None:
            raise ValueError(f"job {job.id} has no claim")
        return cls(job_id=job.id, claim_token=job.claim_token, machine_id=job.attempted_by)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    name: str
    limit: int
    paused: bool
    running: int
    available: int
    scheduled: int
    retryable: int
    oldest_available_age_seconds: float

    @property
    def state(self) -> str:
        if self.paused:
            return "paused"
        return "running" if self.limit > 0 else "stopped"

    @classmethod
    def from_row(cls, row: JSONDict) -> QueueStatus:
        return cls(
            name=row["name"],
            limit=row["limit"],
            paused=row["paused"],
            running=row["running"],
            available=row["available"],
            scheduled=row["scheduled"],
            retryable=row["retryable"],
            oldest_available_age_seconds=float(row["oldest_available_age_seconds"] or 0),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineRecord:
    id: str
    queue: str
    launcher: str
    state: str
    job_id: int | None
    launched_at: datetime
    started_at: datetime | None
    exited_at: datetime | None
    exit_code: int | None
    oom_killed: bool
    jobs_run: int
    detail: JSONDict

    @classmethod
    def from_row(cls, row: JSONDict) -> MachineRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})
