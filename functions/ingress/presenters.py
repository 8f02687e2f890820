"""Rows to the JSON shapes of the HTTP API (camelCase, RFC 3339 UTC times)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.db.models import Job, MachineRecord, QueueStatus


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_json(job: Job, *, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as the API shows it; `result` overrides the stored one (fresh presigned URLs)."""
    body: dict[str, Any] = {
        "id": job.id,
        "queue": job.queue,
        "worker": job.worker,
        "state": job.state.value,
        "tenantId": job.tenant_id,
        "args": job.args,
        "priority": job.priority,
        "attempt": job.attempt,
        "maxAttempts": job.max_attempts,
        "tags": job.tags,
        "meta": job.meta,
        "errors": job.errors,
        "result": result if result is not None else job.result,
        "batchId": job.batch_id,
        "insertedAt": rfc3339(job.inserted_at),
        "scheduledAt": rfc3339(job.scheduled_at),
        "attemptedAt": rfc3339(job.attempted_at),
        "completedAt": rfc3339(job.completed_at),
        "cancelledAt": rfc3339(job.cancelled_at),
        "discardedAt": rfc3339(job.discarded_at),
        "machineId": job.attempted_by,
        "progress": job.progress,
        "workflowId": str(job.workflow_id) if job.workflow_id is not None else None,
    }
    if job.conflict:
        body["conflict"] = True
    return body


def queue_json(status: QueueStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "limit": status.limit,
        "state": status.state,
        "running": status.running,
        "available": status.available,
        "scheduled": status.scheduled,
        "retryable": status.retryable,
        "oldestAvailableAgeSeconds": round(status.oldest_available_age_seconds, 3),
    }


def machine_json(machine: MachineRecord) -> dict[str, Any]:
    return {
        "id": machine.id,
        "queue": machine.queue,
        "launcher": machine.launcher,
        "state": machine.state,
        "jobId": machine.job_id,
        "launchedAt": rfc3339(machine.launched_at),
        "startedAt": rfc3339(machine.started_at),
        "exitedAt": rfc3339(machine.exited_at),
        "exitCode": machine.exit_code,
        "oomKilled": machine.oom_killed,
        "jobsRun": machine.jobs_run,
    }
