"""Completion callbacks: the webhooks job that tells `options.callbackUrl` a job reached a final state.

The caller inserts the returned args as a `webhooks` job of the same tenant, in the transaction of
the final transition, so the notification exists exactly when the outcome does. The callback job
itself carries no callbackUrl, so callbacks never chain.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from shared.db.models import Job, JobState, NewJob
from shared.queues import QUEUES
from shared.schemas.webhooks import WebhookRequest

CALLBACK_EVENTS: Final = {
    JobState.COMPLETED: "job.completed",
    JobState.DISCARDED: "job.discarded",
    JobState.CANCELLED: "job.cancelled",
}
MAX_ERROR_CHARS: Final = 2000  # the payload stays small whatever an error message holds

logger = logging.getLogger(__name__)


def callback_job_args(job: Job) -> dict[str, Any] | None:
    """Args of the webhooks job notifying `job.meta["callbackUrl"]`, or None without one.

    `job` is the row as it is after its final transition; None too when its state is not final.
    """
    url = job.meta.get("callbackUrl")
    event = CALLBACK_EVENTS.get(job.state)
    if not isinstance(url, str) or not url or event is None:
        return None
    try:
        # Built through the request model so the args are exactly what the webhooks handler accepts.
        request = WebhookRequest(url=url, event=event, payload=job_view(job))
    except ValidationError:
        # Never break the final transition over a callback: submit-time validation makes this
        # unreachable for URLs taken through the API, so it is logged, not raised.
        logger.warning("callback url invalid; no callback", extra={"job_id": job.id})
        return None
    return request.function_args()


def callback_job(job: Job) -> NewJob | None:
    """The webhooks job that tells `job`'s callbackUrl it reached its final state, if it has one.

    Inserted in the same transaction as the final transition (machine) or the cancel (ingress).
    """
    args = callback_job_args(job)
    if args is None:
        return None
    webhooks = QUEUES["webhooks"]
    return NewJob(
        queue=webhooks.name,
        worker=webhooks.worker,
        tenant_id=job.tenant_id,
        args=args,
        meta={"requestId": job.meta.get("requestId"), "callbackFor": job.id},
        max_attempts=webhooks.max_attempts,
    )


def job_view(job: Job) -> dict[str, Any]:
    """The small JSON picture of a finished job that callbacks carry."""
    outputs = (job.result or {}).get("outputs") or []
    return {
        "id": job.id,
        "queue": job.queue,
        "worker": job.worker,
        "state": job.state.value,
        "tenantId": job.tenant_id,
        "attempt": job.attempt,
        "outputKeys": [output["key"] for output in outputs if isinstance(output, dict) and "key" in output],
        "error": _last_error(job),
    }


def _last_error(job: Job) -> dict[str, Any] | None:
    if not job.errors:
        return None
    entry: dict[str, Any] = {}
    for name, value in job.errors[-1].items():
        if isinstance(value, datetime):
            value = value.isoformat()
        if isinstance(value, str) and len(value) > MAX_ERROR_CHARS:
            value = value[:MAX_ERROR_CHARS] + "…"
        entry[name] = value
    return entry
