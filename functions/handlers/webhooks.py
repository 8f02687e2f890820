"""The webhooks function: one signed delivery per attempt, retried on the Standard Webhooks schedule.

The body is the Standard Webhooks envelope `{"type": event, "timestamp": <job inserted at>,
"data": payload}`. It and `webhook-id` (from the job id) are the same on every attempt, so a
receiver can deduplicate; `webhook-timestamp` and the signature are made per attempt.

Outcomes: 2xx delivered. 408, 429, 5xx, timeouts and network errors are retried (a Retry-After
answer sets the delay). Redirects are never followed: a 3xx, like any other 4xx (410 included),
discards the job with kind `http-<status>`. Each failed attempt's status and latency are in its
error message; the result of the successful attempt holds its own.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from functions.handlers.base import HandlerContext, HandlerResult, parse_args
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError
from shared.functions import FunctionSpec
from shared.outbound import OutboundNetworkError, OutboundResponse, OutboundTimeout, shared_client
from shared.schemas.webhooks import WebhookRequest, check_webhook_destination, encoded_json
from shared.webhook_signing import signature_headers, tenant_signing_secret, webhook_id

# Seconds to wait after failed attempt n (index n - 1): Standard Webhooks' example schedule
# (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h); the first try is attempt 1.
SCHEDULE_SECONDS: Final = (5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400)
JITTER: Final = 0.1  # +-10 %, so endpoints that failed together are not retried together
MAX_RETRY_AFTER_SECONDS: Final = 86_400.0  # a receiver cannot park a delivery for longer than a day
RESPONSE_BYTES_KEPT: Final = 4096  # the answer's body is not used; read a little, then hang up
RETRYABLE_STATUSES: Final = frozenset({408, 429})  # plus every 5xx

FUNCTION: Final = FunctionSpec(
    queue="webhooks",
    worker="DeliverWebhook",
    summary="Deliver a signed webhook (Standard Webhooks)",
    request=WebhookRequest,
    limit=20,
    timeout_seconds=35,  # above the 30 s maximum receiver timeout
    max_attempts=8,
    preload=True,
    rate_key="host:url",  # one limit per receiving host
)


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based), with jitter."""
    base = SCHEDULE_SECONDS[min(max(attempt, 1), len(SCHEDULE_SECONDS)) - 1]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Deliver the webhook once.

    Raises DestinationNotAllowed and PermanentJobError (`http-<status>`, `invalid-args`) to discard,
    RetryableJobError (`http-<status>`, `timeout`, `network`) to retry.
    """
    request = parse_args(WebhookRequest, job.args)
    # Settings may have changed since submit (allowlist, environment): check again before sending.
    check_webhook_destination(request.url, ctx.settings)

    msg_id = webhook_id(job.id)
    body = _body(request, job)
    secret = tenant_signing_secret(ctx.settings, job.tenant_id)
    headers = {
        **request.headers,
        "content-type": "application/json",
        **signature_headers(secret, msg_id=msg_id, body=body, timestamp=int(time.time())),
    }
    timeout_seconds = _timeout_seconds(request, ctx)
    started = time.monotonic()
    try:
        response = await shared_client(ctx.resources, ctx.settings).request(
            request.method,
            request.url,
            headers=headers,
            content=body.encode(),
            timeout_seconds=timeout_seconds,
            max_bytes=RESPONSE_BYTES_KEPT,
            truncate=True,
            follow_redirects=False,
        )
    except OutboundTimeout as exc:
        raise RetryableJobError(
            f"attempt {job.attempt}: no answer within {timeout_seconds:g} s ({_ms_since(started)} ms)", kind="timeout"
        ) from exc
    except OutboundNetworkError as exc:
        raise RetryableJobError(
            f"attempt {job.attempt}: network error after {_ms_since(started)} ms: {exc}", kind="network"
        ) from exc

    latency_ms = round(response.elapsed_seconds * 1000)
    _raise_unless_delivered(response, attempt=job.attempt, latency_ms=latency_ms)
    ctx.logger.info(
        "webhook delivered",
        extra={"jobId": job.id, "statusCode": response.status_code, "latencyMs": latency_ms},
    )
    return {
        "statusCode": response.status_code,
        "latencyMs": latency_ms,
        "attempts": job.attempt,
        "webhookId": msg_id,
        "event": request.event,
    }


def _body(request: WebhookRequest, job: Job) -> str:
    """The envelope sent and signed; built only from the job, so it is identical on every attempt."""
    occurred_at = job.inserted_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return encoded_json({"type": request.event, "timestamp": occurred_at, "data": request.payload})


def _timeout_seconds(request: WebhookRequest, ctx: HandlerContext) -> float:
    # Stay a second inside the function's own timeout, so a slow receiver is reported as this
    # delivery's timeout (retryable, with its latency) rather than as the machine killing the job.
    budget = FUNCTION.timeout_for(ctx.settings) - 1
    return max(1.0, min(request.timeout_seconds, budget))


def _raise_unless_delivered(response: OutboundResponse, *, attempt: int, latency_ms: int) -> None:
    """Return on 2xx. Raises RetryableJobError for 408/429/5xx, PermanentJobError for anything else."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"attempt {attempt}: HTTP {status} after {latency_ms} ms"
    if status in RETRYABLE_STATUSES or 500 <= status < 600:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if retry_after is not None:
            message += f" (Retry-After {retry_after:g} s)"
        raise RetryableJobError(message, kind=f"http-{status}", retry_after_seconds=retry_after)
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    raise PermanentJobError(message, kind=f"http-{status}")


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date), capped; None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
