"""The shapes of the API's answers, for the OpenAPI document only.

Endpoints build their JSON with functions/ingress/presenters.py; these models describe it. The
schemathesis test checks every live answer against them, so a presenter that drifts from its
model fails the build.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from shared.schemas.common import CamelModel

JobStateName = Literal["scheduled", "available", "executing", "retryable", "completed", "discarded", "cancelled"]


class ProblemFieldError(BaseModel):
    path: str = Field(..., description="dotted path of the offending field, e.g. operations.resize.width")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(..., description="a URI naming the kind of problem")
    title: str
    status: int = Field(..., ge=400, le=599)
    detail: str
    instance: str | None = Field(None, description="the request path")
    errors: list[ProblemFieldError] | None = Field(None, description="validation failures, one per field")


class Progress(CamelModel):
    """How far a running job got, as its handler reported it."""

    model_config = ConfigDict(extra="allow")

    done: int = Field(..., ge=0)
    total: int | None = Field(..., ge=0, description="null while not known")
    message: str | None = None


class Job(CamelModel):
    """A job as the API shows it."""

    id: int
    queue: str
    worker: str
    state: JobStateName
    tenant_id: str
    args: dict[str, Any]
    priority: int = Field(..., ge=0, le=9)
    attempt: int = Field(..., ge=0)
    max_attempts: int = Field(..., ge=1)
    tags: list[str]
    meta: dict[str, Any] = Field(..., description="the request's options.meta plus requestId, callbackUrl, batchId")
    errors: list[dict[str, Any]] = Field(..., description="one entry per failed attempt: attempt, at, kind, error")
    result: dict[str, Any] | None = Field(..., description="outputs (with fresh presigned URLs) and function facts")
    batch_id: str | None
    inserted_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    discarded_at: datetime | None
    machine_id: str | None = Field(..., description="the function machine of the latest attempt")
    progress: Progress | None = Field(..., description="what the handler last reported (written with its heartbeat)")
    workflow_id: str | None = Field(..., description="the workflow this job is a step of")
    conflict: Literal[True] | None = Field(
        None, description="present (true) when a unique job already existed and was returned instead"
    )


class JobList(CamelModel):
    jobs: list[Job]
    next_cursor: str | None = Field(..., description="pass as `cursor` for the next page; null on the last")


class BulkCreated(CamelModel):
    batch_id: str
    count: int = Field(..., ge=0)
    job_ids: list[int]


class Cancelled(CamelModel):
    cancelled: int = Field(..., ge=0)


class Upload(CamelModel):
    """A presigned PUT: send the file's bytes to `url` with `headers`."""

    key: str = Field(..., description="pass as sourceKey (images) or an attachment key (emails)")
    url: str
    method: Literal["PUT"]
    headers: dict[str, str]
    expires_at: datetime


class QueueStatus(CamelModel):
    name: str
    limit: int = Field(..., ge=0)
    state: Literal["running", "paused", "stopped"]
    running: int = Field(..., ge=0)
    available: int = Field(..., ge=0)
    scheduled: int = Field(..., ge=0)
    retryable: int = Field(..., ge=0)
    oldest_available_age_seconds: float = Field(..., ge=0)


class QueueStatusList(RootModel[list[QueueStatus]]):
    """Every queue's status."""


class TenantRuleOut(CamelModel):
    limit: int | None = Field(..., description="this tenant's cap (null: the queue's tenantLimit)")
    weight: int | None = Field(..., description="turns per round (null: 1)")


class RateLimitOut(CamelModel):
    limit: int = Field(..., ge=1, description="most starts per key within any periodSeconds")
    period_seconds: float = Field(..., gt=0)
    key: Literal["tenant", "function"]
    derived_from: str | None = Field(..., description="with key `function`: `host:<arg>` or `domain:<arg>`")


class QueueLimits(CamelModel):
    """A queue's claim rules, applied fleet-wide by every claim."""

    fair: bool = Field(..., description="tenants take turns; false: priority, then time, across the queue")
    tenant_limit: int | None = Field(..., description="most jobs one tenant runs at once (null: no cap)")
    rate_limit: RateLimitOut | None
    tenants: dict[str, TenantRuleOut] = Field(..., description="tenants with their own cap or weight")


class TenantLoad(CamelModel):
    tenant_id: str = Field(..., description="a tenant, or `other`: every tenant beyond the busiest, summed")
    available: int = Field(..., ge=0, description="due jobs waiting for a claim")
    running: int = Field(..., ge=0)
    waiting: int = Field(..., ge=0, description="scheduled or retryable jobs")
    throttled: int = Field(..., ge=0, description="due jobs held back now by the tenant's cap or rate window")
    limit: int | None
    weight: int = Field(..., ge=1)


class RateWindow(CamelModel):
    key: str = Field(..., description="a tenant, a host or a mail domain")
    starts: int = Field(..., ge=1, description="starts within the current window")


class QueueDetail(QueueStatus):
    """A queue's status with its claim rules, its busiest tenants and its busiest rate keys."""

    limits: QueueLimits
    tenants: list[TenantLoad] = Field(..., description="the 20 busiest tenants, then `other`")
    rate_windows: list[RateWindow] = Field(..., description="the 20 busiest rate keys")


class Machine(CamelModel):
    id: str
    queue: str
    launcher: str
    state: Literal["launching", "running", "exited", "failed"]
    job_id: int | None
    launched_at: datetime
    started_at: datetime | None
    exited_at: datetime | None
    exit_code: int | None
    oom_killed: bool
    jobs_run: int = Field(..., ge=0)


class MachineList(CamelModel):
    machines: list[Machine]


class Pruned(CamelModel):
    pruned: int = Field(..., ge=0)


class Rescued(CamelModel):
    rescued: int = Field(..., ge=0)


class Alert(CamelModel):
    kind: str = Field(..., description="`auth`: the launcher's backend rejects its token")
    status: int = Field(..., description="the HTTP status that raised it")
    operation: str
    error: str
    since: float = Field(..., description="Unix time it started")
    message: str


class Health(CamelModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable"]
    dispatcher: Literal["leader", "standby", "off"]
    queues: list[QueueStatus] | None = Field(None, description="present when the database answered")
    reason: str | None = Field(None, description="why the database is unreachable")
    alerts: list[Alert] | None = Field(None, description="what needs a human now (e.g. a rejected FLY_API_TOKEN)")


class WebhookSecret(CamelModel):
    """A tenant's webhook signing secret."""

    tenant_id: str
    secret: str = Field(..., description="`whsec_` + base64 key, as Standard Webhooks libraries take it")
    scheme: Literal["standard-webhooks-v1"]


class BatchCounts(CamelModel):
    """Jobs of a batch per state (final states also count jobs the pruner deleted since)."""

    scheduled: int = Field(..., ge=0)
    available: int = Field(..., ge=0)
    executing: int = Field(..., ge=0)
    retryable: int = Field(..., ge=0)
    completed: int = Field(..., ge=0)
    discarded: int = Field(..., ge=0)
    cancelled: int = Field(..., ge=0)


class Batch(CamelModel):
    """Jobs posted together (`POST /jobs/batch`, `POST /jobs/emails/bulk`)."""

    id: str
    tenant_id: str
    total: int = Field(..., ge=0)
    counts: BatchCounts
    done: int = Field(..., ge=0, description="jobs in a final state")
    progress: float = Field(..., ge=0, le=1, description="done / total")
    finished: bool = Field(..., description="every job was final at least once (the callback, if any, was enqueued)")
    callback_url: str | None
    callback_job_id: int | None = Field(..., description="the webhooks job delivering `batch.finished`")
    inserted_at: datetime | None
    finished_at: datetime | None


class WorkflowStep(CamelModel):
    name: str
    job_id: int
    queue: str | None = Field(..., description="null once the pruner deleted the step's job")
    worker: str | None
    state: JobStateName | None
    waiting: bool = Field(..., description="scheduled, waiting for the steps it depends on")
    depends_on: list[str]
    run_on_failure: bool
    attempt: int | None
    progress: Progress | None
    last_error: dict[str, Any] | None = Field(
        ..., description="the last entry of the job's errors (kind `dependency-failed` when a dependency failed)"
    )


class Workflow(CamelModel):
    id: str
    tenant_id: str
    name: str | None
    state: Literal["running", "completed", "failed", "cancelled"]
    counts: dict[str, int] = Field(..., description="steps per job state")
    inserted_at: datetime
    steps: list[WorkflowStep]


class WorkflowRetried(CamelModel):
    retried: int = Field(..., ge=0, description="steps that were discarded or cancelled and wait or run again")
    workflow: Workflow


class ScheduleJob(CamelModel):
    """The job a schedule inserts at each occurrence."""

    queue: str
    worker: str
    args: dict[str, Any]
    priority: int
    max_attempts: int
    tags: list[str]
    meta: dict[str, Any]


class Schedule(CamelModel):
    id: str
    tenant_id: str
    name: str
    cron: str
    time_zone: str
    misfire: Literal["skip", "runOnce"]
    paused: bool
    next_run_at: datetime = Field(..., description="the next occurrence not yet handled")
    last_run_at: datetime | None = Field(..., description="the last occurrence that inserted a job")
    job: ScheduleJob
    inserted_at: datetime


class ScheduleList(CamelModel):
    schedules: list[Schedule]


class Deleted(CamelModel):
    deleted: Literal[True]
